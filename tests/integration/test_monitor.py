"""A monitor in front of two workers: it shows, streams and accepts changes for every patient,
whichever worker owns it, reading only the deployment's topics."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import numpy as np

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.events import Event
from stream.kafka.embedded import free_port
from stream.segments import decode_segment
from tests.support import one_patient_per_partition, service_settings, wait_for
from twin_engine.registry import partition_of
from twin_engine.web.http_api import serve_http
from twin_engine.web.monitor import Monitor
from twin_engine.worker.service import TwinService


async def test_a_monitor_serves_every_patient_of_two_workers(broker, tiny_model_dir, data_dir):
    prefix = f"m{uuid.uuid4().hex[:8]}"
    model = TwinModel.load(tiny_model_dir)
    settings = service_settings(broker, prefix, data_dir=data_dir, model_path=tiny_model_dir)
    parts = settings.kafka.partitions
    pids = sorted(one_patient_per_partition(parts))
    a, b = TwinService(settings, model), TwinService(settings, model)
    await a.start()
    await asyncio.wait_for(a.ready.wait(), 30)
    await b.start()
    await wait_for(lambda: a.partitions.owned and b.partitions.owned and a.partitions.owned | b.partitions.owned == set(range(parts)), timeout=60)
    await a.send_events(Event(f"reg-{pid}", pid, "register", CardiacState({"NORM": 1.0}, 70),
                              reference={"base_vector": np.eye(model.ibe.cfg.base_dim)[i].tolist()})
                        for i, pid in enumerate(pids))
    await wait_for(lambda: sorted(list(a.streams) + list(b.streams)) == pids)
    await wait_for(lambda: all(s.p.next_seq >= 2 for w in (a, b) for s in w.streams.values()))
    on_b = sorted(b.streams)

    mon_settings = service_settings(broker, prefix, data_dir=data_dir, model_path=tiny_model_dir)
    mon_settings.http_port = free_port()
    monitor = Monitor(mon_settings)
    await monitor.start()
    runner = await serve_http(monitor, "127.0.0.1", mon_settings.http_port, monitor.hub)
    url = f"http://127.0.0.1:{mon_settings.http_port}"
    try:
        await asyncio.wait_for(monitor.ready.wait(), 30)
        assert monitor.patient_ids() == pids  # read back from the registry, not sent to it
        async with aiohttp.ClientSession() as http:
            async def call(method: str, path: str, **kw) -> tuple[int, dict]:
                async with http.request(method, url + path, **kw) as r:
                    return r.status, await r.json(content_type=None)

            status, body = await call("GET", "/patients")
            assert status == 200 and [p["patient_id"] for p in body["patients"]] == pids
            status, body = await call("GET", f"/patients/{on_b[0]}")
            assert status == 200 and body["state"]["heart_rate"] == 70
            assert body["next_seq"] >= 2 and body["stream_time"] is not None  # from the position records
            assert a.patient_view(on_b[0]) is None  # the worker itself knows only its partitions
            assert "which this worker does not serve" in a.why_unknown(on_b[0])
            ghost = next(g for g in (f"ghost-{i}" for i in range(100)) if partition_of(g, parts) in a.partitions.owned)
            assert a.why_unknown(ghost) == "unknown patient"

            # live segments of both workers' patients, relayed as the workers' pages get them
            ws = await http.ws_connect(url + "/ws")
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "hello" and hello["vocab"] == list(model.meta.vocab)
            await ws.send_json({"subscribe": "*"})
            seen: dict[str, list[int]] = {}
            while set(seen) != set(pids):
                f = await ws.receive_json(timeout=10)
                if f["type"] == "segment":
                    seg = decode_segment(json.dumps({k: v for k, v in f.items() if k != "type"}))
                    assert seg.samples.shape == (int(settings.segment_seconds * model.meta.fs), len(model.meta.leads))
                    seen.setdefault(seg.patient_id, []).append(seg.seq)
            assert all(s == list(range(s[0], s[0] + len(s))) for s in seen.values()), seen

            # a change sent through the monitor reaches the worker that owns the patient
            target = on_b[0]
            status, body = await call("POST", f"/patients/{target}/state",
                                      json={"event_id": "afib-via-monitor",
                                            "state": {"statements": {"AFIB": 1}, "heart_rate": 120}})
            assert status == 202
            while True:
                f = await ws.receive_json(timeout=20)
                if f["type"] == "segment" and f["patient_id"] == target and f["event_id"] == "afib-via-monitor":
                    break
            assert b.registry.get(target).state["statements"] == {"AFIB": 1.0}
            await wait_for(lambda: monitor.patient_view(target)["state"]["heart_rate"] == 120)
            status, _ = await call("POST", f"/patients/{target}/state", json={"state": {"statements": {"NOPE": 1}}})
            assert status == 400

            # removal: the monitor's subscribers are told, and the patient is gone from its view
            victim = sorted(a.streams)[0]
            assert (await call("DELETE", f"/patients/{victim}"))[0] == 202
            while (f := await ws.receive_json(timeout=20)) != {"type": "removed", "patient_id": victim}:
                pass
            assert (await call("GET", f"/patients/{victim}"))[0] == 404
            await ws.close()

            async with http.get(url + "/metrics") as r:
                text = await r.text()
            assert f'twin_monitor_records_total{{topic="{settings.kafka.topic_segments}"}}' in text
            assert f"twin_monitor_patients {len(pids) - 1}.0" in text
            assert partition_of(victim, parts) in a.partitions.owned
    finally:
        await runner.cleanup()
        await monitor.stop()
        await a.stop()
        await b.stop()


async def test_a_fetch_of_many_segments_reaches_a_subscriber_whole(broker, data_dir):
    """Hundreds of segments arrive in one fetch; a subscriber's queue holds 64 frames. The
    monitor lets the subscriber's writer run while it relays them, so none is dropped."""
    from aiokafka import AIOKafkaProducer

    from stream.segments import Segment

    settings = service_settings(broker, f"m{uuid.uuid4().hex[:8]}", data_dir=data_dir)
    settings.http_port = free_port()
    monitor = Monitor(settings)
    await monitor.start()
    runner = await serve_http(monitor, "127.0.0.1", settings.http_port, monitor.hub)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=50, max_batch_size=1 << 20)
    await prod.start()
    n, samples = 400, np.zeros((25, 12), np.float32)
    try:
        await asyncio.wait_for(monitor.ready.wait(), 30)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{settings.http_port}/ws?patients=*")
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
            for i in range(n):
                seg = Segment(f"bed-{i % 50}", i // 50, float(i), 250, tuple("ABCDEFGHIJKL"), samples, {}, None, "t")
                await prod.send(settings.kafka.topic_segments, seg.to_json(), key=seg.patient_id.encode(), partition=0)
            await prod.flush()
            got = []
            while len(got) < n:
                try:
                    got.append(await ws.receive_json(timeout=3))
                except TimeoutError:
                    break
            dropped = sum(c.dropped for c in monitor.hub.clients)
            await ws.close()
        assert len(got) == n and dropped == 0, f"{len(got)} of {n} frames received, {dropped} dropped"
        assert [f["start_time"] for f in got] == [float(i) for i in range(n)]  # in order
    finally:
        await prod.stop()
        await runner.cleanup()
        await monitor.stop()
