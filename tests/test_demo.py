"""The README's main command, `twin-engine demo`, as a user runs it: its own embedded broker,
patients onboarded from real records, a state change from the scenario, the dashboard's metrics
live while it runs, and a clean exit at the end of ``--duration``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

from twin_engine.broker import free_port


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_demo_runs_the_whole_service_on_its_own_broker(tiny_model_dir, data_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "TWIN_ENGINE_MODEL_PATH": str(tiny_model_dir), "TWIN_ENGINE_DATA_DIR": str(data_dir),
           "TWIN_ENGINE_CACHE_DIR": str(tmp_path), "TWIN_ENGINE_HTTP_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "twin_engine.cli", "demo", "--patients", "3", "--duration", "30"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                seen = ""
            if _metric(seen, "twin_live_patients") == 3 and _metric(seen, "twin_segments_published_total") >= 6:
                break
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert _metric(seen, "twin_live_patients") == 3, seen[-2000:]
    assert _metric(seen, "twin_segments_published_total") >= 6
    assert "demo: onboarded 3 patients" in out
    assert f"dashboard http://127.0.0.1:{port}/" in out
    # the scenario moves a patient every 15 s: at least one change within the 30 s
    assert re.search(r"demo: bed-0[1-3] -> \S+ \d+ bpm", out), out[-3000:]
    assert "Traceback" not in out
