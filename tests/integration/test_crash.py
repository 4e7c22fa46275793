"""kill -9 between two writes leaves no gap: a worker killed at each crash point
(twin_engine.crash_points) while condition events arrive, then restarted, publishes every
sequence number of every stream (a duplicate is allowed: at least once) and applies every event."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
import uuid

from aiokafka import AIOKafkaProducer

from models.conditions import CardiacState
from stream.events import Event
from stream.kafka.embedded import free_port
from stream.segments import decode_segment
from tests.support import RECORDS, read_all
from twin_engine.config import KafkaConfig


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


async def _until(cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


async def _case(broker, tiny_model_dir, data_dir, tmp_path, point: str) -> None:
    k = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, partitions=4).namespaced(f"k{uuid.uuid4().hex[:6]}")
    port = free_port()
    env = {**os.environ, "TWIN_ENGINE_MODEL_PATH": str(tiny_model_dir), "TWIN_ENGINE_DATA_DIR": str(data_dir),
           "TWIN_ENGINE_CACHE_DIR": str(tmp_path), "TWIN_ENGINE_HTTP_PORT": str(port),
           "TWIN_ENGINE_SPEED": "10", "TWIN_ENGINE_SEGMENT_SECONDS": "1", **k.to_env()}

    async def worker(crash: str | None):
        e = {**env, "TWIN_CRASH_AT": crash} if crash else {key: v for key, v in env.items() if key != "TWIN_CRASH_AT"}
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "twin_engine.ops.cli", "serve", env=e,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)

    pids = ["bed-0", "bed-1"]
    sent: dict[str, str] = {}
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await prod.start()
    first = await worker(point)
    try:
        await _until(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 90, "the first worker")
        for pid, rec in zip(pids, RECORDS, strict=False):
            ev = Event(f"reg-{pid}", pid, "register", CardiacState({"NORM": 1.0}, 70), reference={"wfdb": rec})
            await prod.send_and_wait(k.topic_events, ev.to_json(), key=pid.encode())
        i = 0
        # state changes, written with the patient's record, until the crash point is reached: a
        # deadline, not a count (with two suites and six workers on 2 cores, 300 changes 0.3 s
        # apart were once not enough for a worker to publish 12 segments)
        deadline = asyncio.get_running_loop().time() + 240
        while first.returncode is None and asyncio.get_running_loop().time() < deadline:
            pid = pids[i % 2]
            ev = Event(f"c{i}", pid, "condition", CardiacState({"NORM": 1.0}, 60 + i % 40))
            await prod.send_and_wait(k.topic_events, ev.to_json(), key=pid.encode())
            sent[pid] = ev.event_id
            i += 1
            try:
                await asyncio.wait_for(first.wait(), 0.3)
            except TimeoutError:
                pass
        assert first.returncode == -9, f"{point}: the worker was not killed at its crash point"
        second = await worker(None)
        try:
            await _until(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 90, "the restarted worker")

            def caught_up() -> bool:
                for pid in pids:
                    status, body = _get(f"http://127.0.0.1:{port}/patients/{pid}")
                    if status != 200 or json.loads(body)["state_event_id"] != sent.get(pid, f"reg-{pid}"):
                        return False
                    if json.loads(body)["next_seq"] < 8:
                        return False
                return True

            await _until(caught_up, 90, "every event applied after the restart")
        finally:
            second.terminate()
            out = (await second.communicate())[0].decode()
        assert second.returncode == 0, out[-3000:]
    finally:
        for p in (first,):
            if p.returncode is None:
                p.kill()
                await p.wait()
        await prod.stop()
    segs = [decode_segment(m.value) for m in await read_all(broker.bootstrap_servers, k.topic_segments)]
    for pid in pids:
        seqs = sorted(s.seq for s in segs if s.patient_id == pid)
        assert seqs, f"{point}: no segments for {pid}"
        missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
        assert not missing, f"{point}: {pid} is missing segments {missing}"


async def test_kill_9_at_each_crash_point_leaves_no_gap(broker, tiny_model_dir, data_dir, tmp_path):
    # the three cases at once: each waits ~13 s for Tansu to expire the killed member's session
    cases = ["segment-sent:12", "segment-acked:12", "events-durable:6"]
    results = await asyncio.gather(*(_case(broker, tiny_model_dir, data_dir, tmp_path / str(i), point)
                                     for i, point in enumerate(cases)), return_exceptions=True)
    failures = [f"{p}: {r!r}" for p, r in zip(cases, results, strict=True) if isinstance(r, BaseException)]
    assert not failures, "\n".join(failures)
