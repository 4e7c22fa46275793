"""Faults the service survives: a poison event, a failing model, a broker that lost its state,
a crash between two writes, and a seeded fuzz of what callers can send."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import uuid

import aiohttp
import numpy as np
from aiokafka import AIOKafkaProducer

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.events import Event, EventError, parse_event
from stream.kafka.embedded import EmbeddedBroker
from tests.support import RECORDS, read_all, service_settings, start_with_dashboard, wait_for
from twin_engine.metrics import Metrics
from twin_engine.registry import Patient
from twin_engine.worker.batcher import MicroBatcher
from twin_engine.worker.generator import GenRequest
from twin_engine.worker.service import TwinService


def _req() -> GenRequest:
    return GenRequest(np.zeros(4, np.float32), CardiacState(), None, 10, 0)


async def test_the_batcher_survives_a_model_that_misbehaves():
    calls = []

    def generate(reqs):
        calls.append(len(reqs))
        if len(calls) == 1:
            return [np.zeros(1)] * (len(reqs) - 1)  # one output short: zip(strict=True) ended the loop
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access")
        return [np.full(1, i) for i in range(len(reqs))]

    metrics = Metrics()
    b = MicroBatcher(generate, 8, 0.01, metrics)
    b.start()
    try:
        first = await asyncio.gather(*(b.submit(_req(), float("-inf")) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "2 outputs for 3" in str(r) for r in first)
        second = await asyncio.gather(b.submit(_req(), float("-inf")), return_exceptions=True)
        assert isinstance(second[0], RuntimeError)
        assert b.alive
        third = await asyncio.wait_for(b.submit(_req(), float("-inf")), 5)
        assert third.shape == (1,)
        assert metrics.registry.get_sample_value("twin_generation_failures_total") == 2
    finally:
        await b.stop()


def test_a_patient_record_never_carries_an_unacknowledged_position():
    p = Patient("bed-1", [0.1] * 4, "v", {"statements": {}, "heart_rate": 70, "sex": 0})
    p.stream_start, p.next_seq = 1000.0, 12
    p.acknowledge(p.position())
    p.next_seq, p.tail_b64 = 13, "AAAA"  # segment 12 handed to the producer, not yet acknowledged
    record = json.loads(p.to_json())
    assert record["next_seq"] == 12 and record["tail_b64"] is None
    p.acknowledge(p.position())
    assert json.loads(p.to_json())["next_seq"] == 13
    restored = Patient.from_json(p.to_json())
    assert restored.next_seq == 13 and json.loads(restored.to_json())["next_seq"] == 13


async def test_a_poison_registration_is_dead_lettered_and_the_event_behind_it_applied(broker, tiny_model_dir,
                                                                                        data_dir):
    """546 kB of inline samples at fs 1: its dead letter, with the original in base64, came to
    1,064,467 bytes, over the producer's limit, and the partition retried it forever."""
    settings = service_settings(broker, f"p{uuid.uuid4().hex[:8]}", data_dir=data_dir)
    svc = TwinService(settings, TwinModel.load(tiny_model_dir))
    await svc.start()
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=1 << 20)
    await prod.start()
    try:
        await asyncio.wait_for(svc.ready.wait(), 30)
        row = [0.123456] * 12
        poison = json.dumps({"schema_version": 1, "event_id": "poison", "patient_id": "bed-7", "type": "register",
                             "reference": {"samples": [row] * 5600, "fs": 1}}).encode()
        assert 500_000 < len(poison) < 1_000_000
        await prod.send_and_wait(settings.kafka.topic_events, poison, key=b"bed-7")
        good = Event("good", "bed-7", "register", CardiacState(), reference={"wfdb": RECORDS[0]})
        await prod.send_and_wait(settings.kafka.topic_events, good.to_json(), key=b"bed-7")
        await wait_for(lambda: "bed-7" in svc.streams and svc.streams["bed-7"].p.next_seq >= 1, 60)
        dlq = [json.loads(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_dead_letter)]
        assert len(dlq) == 1
        d = dlq[0]
        assert d["event_id"] == "poison" and d["patient_id"] == "bed-7" and d["truncated"]
        assert d["original_bytes"] == len(poison) and d["original_sha256"] == hashlib.sha256(poison).hexdigest()
        assert poison.startswith(base64.b64decode(d["original_b64"]))
        assert d["reason"].startswith("reference fs must be")
        assert svc.metrics.registry.get_sample_value("twin_event_kafka_errors_total") == 0
    finally:
        await prod.stop()
        await svc.stop()


async def test_a_broker_that_lost_its_state_makes_the_worker_not_ready(tiny_model_dir, data_dir, caplog):
    """A memory-only broker restarted: the worker used to rejoin with "0 patients restored" and
    stay ready. Now the watch sees the registry end before what it acknowledged."""
    b = await asyncio.to_thread(EmbeddedBroker().start)
    settings = service_settings(b, f"l{uuid.uuid4().hex[:8]}", data_dir=data_dir, broker_check_s=0.5)
    svc = TwinService(settings, TwinModel.load(tiny_model_dir))
    await svc.start()
    try:
        await asyncio.wait_for(svc.ready.wait(), 30)
        await svc.send_event(Event("r1", "bed-1", "register", CardiacState(), reference={"wfdb": RECORDS[0]}))
        await wait_for(lambda: "bed-1" in svc.streams and svc.streams["bed-1"].p.next_seq >= 3, 60)
        # a healthy broker stays healthy: a dozen checks with registry records acknowledged (the
        # watch once read topic partitions from the consumer's cache and called them gone)
        caplog.set_level(logging.INFO, logger="aiokafka.consumer.subscription_state")
        await asyncio.sleep(6.0)
        assert svc.lost is None and svc.ready.is_set(), svc.lost
        # nor does it fill the log: the watch's consumer is assigned its partitions once, not
        # every check (aiokafka logs each assignment at INFO)
        assigned = [r for r in caplog.records if r.name == "aiokafka.consumer.subscription_state"
                    and settings.kafka.topic_registry in r.getMessage()]
        assert len(assigned) <= 2, [r.getMessage() for r in assigned]
        b.stop()
        b2 = await asyncio.to_thread(EmbeddedBroker(port=b.port).start)  # the same address, nothing in it
        try:
            await wait_for(lambda: svc.lost is not None, 60)
            assert not svc.ready.is_set()
            assert svc.metrics.registry.get_sample_value("twin_broker_state_lost") == 1
            assert "LOST ITS STATE" in caplog.text
        finally:
            await svc.stop()
            b2.stop()
    finally:
        b.stop()


def _mutations(rng: random.Random, base: dict) -> list:
    """Bodies a careless or hostile client sends: fields dropped, retyped, huge, nested, NaN."""
    weird = [None, True, -1, 0, 1e308, float("nan"), "", "x" * 5000, [], {}, [[[[]]]], {"a": {"b": {}}},
             "../../etc/passwd", "bed-1#position", -1e308, 2**63, "\u0000", "\ud800"[:0] + "é"]
    out = []
    for _ in range(120):
        body = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            target = body
            path = rng.choice([["patient_id"], ["event_id"], ["effective_time"], ["transition_seconds"],
                               ["state"], ["state", "heart_rate"], ["state", "statements"], ["state", "age"],
                               ["state", "sex"], ["reference"], ["reference", "wfdb"], ["reference", "fs"],
                               ["reference", "samples"], ["reference", "base_vector"], ["reference", "leads"],
                               ["reference", "start"], ["reference", "seconds"], ["schema_version"], ["type"]])
            for k in path[:-1]:
                if not isinstance(target.get(k), dict):
                    target[k] = {}
                target = target[k]
            if rng.random() < 0.2:
                target.pop(path[-1], None)
            else:
                target[path[-1]] = rng.choice(weird)
        out.append(body)
    out += [[], "text", 12, None, [{"patient_id": "bed-1"}]]
    return out


async def test_fuzz_http_bodies_and_kafka_events_get_clear_refusals(broker, tiny_model_dir, data_dir):
    """Seeded and bounded: every body gets 202 or a 4xx with a reason (never a 500), every
    mutated event a dead letter or its effect, and a valid event behind them all is applied."""
    rng = random.Random(2026)
    reg = {"schema_version": 1, "event_id": "f", "patient_id": "bed-f", "type": "register",
           "state": {"statements": {"SR": 1}, "heart_rate": 70},
           "reference": {"base_vector": [0.1] * 16}}
    cond = {"state": {"statements": {"AFIB": 1}, "heart_rate": 110}, "transition_seconds": 2}
    svc, hub, runner, settings = await start_with_dashboard(broker, tiny_model_dir, data_dir, speed=10.0, patients=1)
    url = f"http://127.0.0.1:{settings.http_port}"
    statuses: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for path, base in (("/patients", reg), ("/patients/bed-0/state", cond)):
                for body in _mutations(rng, base):
                    async with http.post(url + path, data=json.dumps(body, allow_nan=True),
                                         headers={"Content-Type": "application/json"}) as r:
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        answer = await r.json(content_type=None)
                        assert r.status in (202, 400, 413), (r.status, body, answer)
                        assert "Traceback" not in json.dumps(answer)
                        if r.status != 202:
                            assert answer["error"]
        assert statuses.get(400, 0) > 50 and statuses.get(202, 0) > 0, statuses
        # the same mutations straight to Kafka, keyed by their patient where it is a string
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await prod.start()
        try:
            for body in _mutations(rng, reg) + _mutations(rng, {**cond, **{k: reg[k] for k in ("schema_version",
                                                                             "patient_id", "event_id")},
                                                                 "type": "condition"}):
                pid = body.get("patient_id") if isinstance(body, dict) else None
                raw = json.dumps(body, allow_nan=True).encode()
                try:
                    parse_event(raw)
                except EventError:
                    pass  # anything else raised fails the test
                await prod.send(settings.kafka.topic_events, raw, key=pid.encode() if isinstance(pid, str) else b"x")
            last = Event("after-fuzz", "bed-0", "condition", CardiacState({"STACH": 1.0}, 133))
            await prod.send_and_wait(settings.kafka.topic_events, last.to_json(), key=b"bed-0")
        finally:
            await prod.stop()
        await wait_for(lambda: svc.registry.get("bed-0").state_event_id == "after-fuzz", 120)
        assert svc.metrics.registry.get_sample_value("twin_event_kafka_errors_total") == 0
        dlq = [json.loads(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_dead_letter)]
        assert dlq and not any("internal error" in d["reason"] for d in dlq)
    finally:
        await runner.cleanup()
        await hub.close()
        await svc.stop()


def test_serve_without_a_broker_retries_then_exits_with_a_message(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TWIN_ENGINE_MODEL_PATH": str(tiny_model_dir), "TWIN_ENGINE_CACHE_DIR": str(tmp_path),
           "TWIN_ENGINE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "TWIN_ENGINE_KAFKA_CONNECT_TIMEOUT_S": "2"}
    out = subprocess.run([sys.executable, "-m", "twin_engine.ops.cli", "serve"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "no Kafka broker answered at 127.0.0.1:1 within 2 s" in out.stderr
    assert "does not answer yet; trying again" in out.stderr and "Traceback" not in out.stderr


def test_serve_on_all_interfaces_without_tokens_refuses_to_start(tiny_model_dir, tmp_path, broker):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TWIN_ENGINE_MODEL_PATH": str(tiny_model_dir), "TWIN_ENGINE_CACHE_DIR": str(tmp_path),
           "TWIN_ENGINE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "TWIN_ENGINE_HTTP_HOST": "0.0.0.0",
           "TWIN_ENGINE_HTTP_PORT": str(__import__("stream.kafka.embedded").kafka.embedded.free_port()),
           "TWIN_ENGINE_KAFKA_GROUP_ID": f"refuse-{uuid.uuid4().hex[:6]}"}
    out = subprocess.run([sys.executable, "-m", "twin_engine.ops.cli", "serve"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "no API tokens are configured" in out.stderr and "Traceback" not in out.stderr
