"""The monitor page in headless Chromium against the service on the embedded broker,
and the WebSocket subscription's back-pressure."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest

from stream.events import Event
from stream.subscribers import SubscriberHub
from tests.cdp import Chromium, chromium_binary
from tests.support import start_with_dashboard, wait_for

ARTIFACTS = Path(os.environ.get("TWIN_ENGINE_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))


@pytest.mark.skipif(chromium_binary() is None, reason="Debian chromium not installed (./twin test installs it as root)")
async def test_monitor_page_in_chromium(broker, tiny_model_dir, data_dir):
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir)
    try:
        async with Chromium(chromium_binary()) as browser:
            page = await browser.open(f"http://127.0.0.1:{settings.http_port}/")
            await page.wait_for("document.querySelectorAll('.card').length === 2", 30)
            # traces move: the sweep's stream time advances, each frame drawing only what is new
            # (a whole redraw only at the start, on a layout change or after a stall)
            t1 = float(await page.wait_for("patients.get('bed-0').drawn"))
            redraws = await page.eval("patients.get('bed-0').redraws")
            await asyncio.sleep(1.5)
            t2 = float(await page.eval("patients.get('bed-0').drawn"))
            assert t2 > t1 + 0.5
            assert await page.eval("patients.get('bed-0').redraws") - redraws <= 1
            # change the state from the page, as a user would
            await page.eval("""(() => { const s = document.querySelector('.card[data-pid="bed-0"] .set');
                               s.value = 'AFIB 115'; s.dispatchEvent(new Event('change')); return true; })()""")
            await page.wait_for("patients.get('bed-0').marks.some(m => m.label.startsWith('AFIB'))", 30)
            await page.wait_for("document.querySelector('.card[data-pid=\"bed-0\"] .state').textContent.includes('AFIB')", 30)
            assert svc.registry.get("bed-0").state["statements"] == {"AFIB": 1.0}
            # and the mark is on screen: wait until the playhead has passed it
            await page.wait_for("""(() => { const p = patients.get('bed-0'); const m = p.marks[p.marks.length - 1];
                                   return playhead(p) > m.t + 1; })()""", 30)
            # noise from the page goes to the artifacts endpoint: this deployment (the tiny model,
            # no rhythm layer) refuses it, and the page says why
            await page.eval("""(() => { const s = document.querySelector('.card[data-pid="bed-0"] .set');
                               s.value = 'lead II off 5 s'; s.dispatchEvent(new Event('change')); return true; })()""")
            await page.wait_for("document.getElementById('notice').textContent.includes('draws no artifacts')", 10)
            # onboard a patient from the page's record list, as a user would: a minute of a
            # two-lead MIT-BIH record, its other leads estimated
            await page.wait_for("[...document.getElementById('record').options].some(o => o.text.startsWith('MIT-BIH'))", 30)
            await page.eval("""(() => { const sel = document.getElementById('record');
                               sel.value = [...sel.options].find(o => o.text.startsWith('MIT-BIH')).value;
                               document.getElementById('newpid').value = 'bed-new';
                               document.getElementById('onboard').click(); return true; })()""")
            await page.wait_for("document.getElementById('notice').textContent.includes('bed-new')", 10)
            assert "onboarding" in await page.eval("document.getElementById('notice').textContent")
            await page.wait_for("document.querySelectorAll('.card').length === 3 && patients.get('bed-new').last", 60)
            assert "bed-new" in svc.streams and len(svc.registry.get("bed-new").estimated_leads) == 10
            # discharged: its card goes
            await svc.send_event(Event("rm-new", "bed-new", "remove"))
            await page.wait_for("document.querySelectorAll('.card').length === 2 && !patients.has('bed-new')", 30)
            shot = await page.screenshot(ARTIFACTS / "dashboard.png")
            assert shot.stat().st_size > 10_000
            # a page for some patients only (/?patients=...): the others' frames never reach it
            only = await browser.open(f"http://127.0.0.1:{settings.http_port}/?patients=bed-1")
            await only.wait_for("patients.has('bed-1') && patients.get('bed-1').last", 30)
            seq = svc.streams["bed-0"].p.next_seq
            await wait_for(lambda: svc.streams["bed-0"].p.next_seq >= seq + 2)
            assert await only.eval("[...patients.keys()].join(',')") == "bed-1"
            assert "1 patients" in await only.eval("document.getElementById('status').textContent")
    finally:
        await runner.cleanup()
        await hub.close()
        await svc.stop()


async def test_slow_subscriber_drops_frames_not_memory(broker, tiny_model_dir, data_dir):
    """A client that never reads: its queue stays bounded, drops are counted; a reading client
    in the same hub gets every segment."""
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir, speed=10.0, patients=2)
    url = f"http://127.0.0.1:{settings.http_port}/ws"
    try:
        async with aiohttp.ClientSession() as session:
            slow = await session.ws_connect(url + "?patients=*", max_msg_size=0, compress=15)  # never reads after connect
            # offered permessage-deflate, as browsers do, and declined: no per-client compression
            assert slow.compress == 0
            fast = await session.ws_connect(url + "?patients=bed-1", max_msg_size=0)
            got = []
            loop = asyncio.get_running_loop()
            end = loop.time() + 8
            while loop.time() < end:
                try:
                    msg = await fast.receive(timeout=1)
                except TimeoutError:
                    continue
                d = json.loads(msg.data)
                if d["type"] == "segment":
                    got.append(d)
            slow_client = next(c for c in hub.clients if c.patients is None)
            assert slow_client.queue.qsize() <= hub.queue_frames
            # the slow client fell behind (the socket buffers fill first), or at least it is bounded
            seqs = [d["seq"] for d in got]
            assert all(d["patient_id"] == "bed-1" for d in got)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the reading client missed frames"
            assert len(seqs) >= 20
            await slow.close()
            await fast.close()
    finally:
        await runner.cleanup()
        await hub.close()
        await svc.stop()


async def test_dropped_frames_are_counted():
    from stream.subscribers import Subscriber
    from twin_engine.metrics import Metrics

    hub = SubscriberHub(queue_frames=4, metrics=Metrics())

    class _WS:  # a subscriber whose writer is not running: nothing drains its queue
        pass

    client = Subscriber(_WS(), asyncio.Queue(maxsize=4), None)  # subscribed to every patient
    hub.clients.add(client)
    for i in range(10):
        hub._offer("p", f"frame-{i}")
    assert client.queue.qsize() == 4 and client.dropped == 6
    assert hub.metrics.registry.get_sample_value("twin_subscriber_dropped_frames_total") == 6


def test_the_page_ships_in_the_package():
    """`pip install .` (the Docker image) installs only what package-data names: the page and the
    example scenarios must be among it (the image once served no page)."""
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["twin_engine"]
    files = [p.relative_to(root / "twin_engine").as_posix()
             for d in ("web/static", "ops/scenarios") for p in (root / "twin_engine" / d).iterdir()]
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), (files, globs)
