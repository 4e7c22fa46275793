"""Prometheus: the real server scrapes /metrics; the Grafana dashboard asks only for metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from stream.kafka.embedded import free_port
from tests.support import start_with_dashboard
from twin_engine.metrics import Metrics, MonitorMetrics

REPO = Path(__file__).resolve().parents[2]


def test_grafana_dashboard_uses_exported_metrics():
    text = (Metrics().exposition() + MonitorMetrics().exposition()).decode()  # workers and monitors
    exposed = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    names = set()
    for name, kind in exposed:
        names.add(name)
        if kind == "counter":
            names.add(name + "_total")
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    dash = json.loads((REPO / "deploy/grafana/twin-engine.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"\btwin_\w+", t["expr"])}
    assert used and used <= names, used - names
    for name in names:  # Prometheus naming: counters end in _total, durations in _seconds
        assert name.startswith("twin_")


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")
async def test_prometheus_scrapes_the_service(broker, tiny_model_dir, data_dir, tmp_path):
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir, speed=5.0, patients=2)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: twin\n"
                   f"    static_configs:\n      - targets: ['127.0.0.1:{settings.http_port}']\n")
    proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            async def query(q: str):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q}) as r:
                        body = await r.json()
                        return body["data"]["result"]
                except (aiohttp.ClientError, KeyError, json.JSONDecodeError):
                    return []

            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            live = published = None
            while loop.time() < end:
                live = await query("twin_live_patients")
                published = await query("twin_segments_published_total")
                if live and published and float(published[0]["value"][1]) > 0:
                    break
                await asyncio.sleep(0.5)
            assert live and float(live[0]["value"][1]) == 2
            assert published and float(published[0]["value"][1]) > 0
            up = await query('up{job="twin"}')
            assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()
        await hub.close()
        await svc.stop()
