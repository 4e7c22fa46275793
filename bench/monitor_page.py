"""How smoothly the monitor page draws, and what drawing it costs the machine.

The service (embedded broker, default model, real time) twins ``--patients`` held-out PTB-XL
patients; headless Chromium (software rendering, as on a machine without a GPU) opens the
monitor page, waits until every card has data, and records each animation frame's time for
``--seconds`` with one lead per card and with all 12. Each page given with ``--page NAME=FILE``
(or ``--before REV``: the page as it was at that git revision) is served beside the current one
and measured in alternating rounds on the same running service, so the figures compare side by
side. Reported per page and view: frames per second, median and worst frame interval, and the
CPU the browser's processes used (in cores).

    .venv/bin/python bench/monitor_page.py [--patients 16] [--seconds 10] [--rounds 2] [--before REV]

Figures, not pass/fail; results in docs/BENCHMARKS.md (Dashboards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from stream.events import Event
from stream.kafka.embedded import EmbeddedBroker, free_port
from stream.subscribers import SubscriberHub
from twin_engine.config import load_settings
from twin_engine.metrics import Metrics
from twin_engine.ops.app import load_model
from twin_engine.ops.demo import demo_patients
from twin_engine.web.dashboard import STATIC, page_hello
from twin_engine.web.http_api import build_app
from twin_engine.worker.service import TwinService

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the Chromium driver is the tests' own (tests/cdp.py), not the package's
from tests.cdp import Chromium, chromium_binary  # noqa: E402

RECORD_FRAMES = """(() => { window.__frames = []; const t0 = performance.now();
  (function tick(t) { if (t - t0 < %d) { window.__frames.push(t); requestAnimationFrame(tick); } })(t0);
  return true; })()"""


async def measure(browser: Chromium, url: str, patients: int, lead: str, seconds: float,
                  screenshot: Path | None = None) -> dict:
    page = await browser.open(url)
    try:
        await page.wait_for(f"typeof patients !== 'undefined' && patients.size === {patients} && [...patients.values()].every(p => p.last)", 60)
        await page.eval(f"""(() => {{ const s = document.getElementById('lead'); s.value = {json.dumps(lead)};
                                     s.dispatchEvent(new Event('change')); return true; }})()""")
        await asyncio.sleep(2.0)  # the first full draw after the switch is not what is measured
        cpu0, t0 = browser.cpu_seconds(), time.monotonic()
        await page.eval(RECORD_FRAMES % int(seconds * 1000))
        await asyncio.sleep(seconds + 0.3)
        cpu = (browser.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        frames = await page.eval("window.__frames")
        if screenshot is not None:
            await page.screenshot(screenshot)
    finally:
        await browser.close(page)
    gaps = [b - a for a, b in zip(frames, frames[1:], strict=False)]
    return {"fps": (len(frames) - 1) / ((frames[-1] - frames[0]) / 1000), "frame_ms_median": statistics.median(gaps),
            "frame_ms_worst": max(gaps), "browser_cpu_cores": cpu}


async def run(args: argparse.Namespace, broker: EmbeddedBroker) -> dict:
    pages = {"current": STATIC / "index.html"}
    tmp = Path(tempfile.mkdtemp(prefix="monitor-page-"))
    if args.before:
        old = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.before}:twin_engine/web/static/index.html"],
                             check=True, capture_output=True).stdout
        (tmp / "before.html").write_bytes(old)
        pages[f"before ({args.before})"] = tmp / "before.html"
    for spec in args.page:
        name, path = spec.split("=", 1)
        pages[name] = Path(path)

    settings = load_settings(env={}, speed=1.0)
    settings.kafka.bootstrap_servers = broker.bootstrap_servers
    settings.http_port = free_port()
    metrics = Metrics()
    model = load_model(settings)
    hub = SubscriberHub(metrics=metrics, hello=page_hello(settings, model.meta.vocab))
    service = TwinService(settings, model, sinks=[hub], metrics=metrics)
    await service.start()
    app = build_app(service, hub)
    for i, path in enumerate(pages.values()):
        app.router.add_get(f"/bench/{i}", lambda _req, p=path: web.FileResponse(p))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.http_port).start()
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in pages}
    try:
        await asyncio.wait_for(service.ready.wait(), 60)
        for pid, path, state in demo_patients(settings, args.patients):
            await service.send_event(Event(f"reg-{pid}", pid, "register", state, reference={"wfdb": path}))
        async with Chromium(chromium_binary()) as browser:
            for r in range(args.rounds):
                for i, name in enumerate(pages):
                    for lead in ("II", "all 12"):
                        shot = None
                        if args.screenshots and r == args.rounds - 1:
                            shot = args.screenshots / f"{i}-{lead.replace(' ', '')}.png"
                        m = await measure(browser, f"http://127.0.0.1:{settings.http_port}/bench/{i}",
                                          args.patients, lead, args.seconds, shot)
                        results[name].setdefault(lead, []).append(m)
                        print(f"round {r + 1} {name:>22} {lead:>6}: {m['fps']:5.1f} frames/s, median "
                              f"{m['frame_ms_median']:5.1f} ms, worst {m['frame_ms_worst']:6.1f} ms, "
                              f"browser {m['browser_cpu_cores']:.2f} cores", flush=True)
    finally:
        await runner.cleanup()
        await hub.close()
        await service.stop()
    summary = {name: {lead: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for lead, ms in leads.items()}
               for name, leads in results.items()}
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "patients": args.patients,
            "seconds": args.seconds, "rounds": args.rounds, "median": summary, "runs": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", help="also measure the page as it was at this git revision")
    ap.add_argument("--page", action="append", default=[], help="NAME=FILE: another page to measure")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--screenshots", type=Path, help="a folder for each page's last screenshots")
    args = ap.parse_args()
    if chromium_binary() is None:
        sys.exit("no chromium: install Debian's chromium (./twin test does, as root)")
    broker = EmbeddedBroker().start()  # before the event loop: it checks the broker with one of its own
    try:
        out = asyncio.run(run(args, broker))
    finally:
        broker.stop()
    print(f"\nmedians of {args.rounds} rounds, {args.patients} real-time patients, {args.seconds:.0f} s each:")
    print("| page | view | frames/s | frame median / worst (ms) | browser CPU (cores) |\n|---|---|---|---|---|")
    for name, leads in out["median"].items():
        for lead, m in leads.items():
            print(f"| {name} | {lead} | {m['fps']:.1f} | {m['frame_ms_median']:.1f} / {m['frame_ms_worst']:.0f} | "
                  f"{m['browser_cpu_cores']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
