"""The service end to end on the embedded broker, with a tiny model."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from models.conditions import CardiacState
from models.twin import TwinModel
from stream.events import Event
from stream.segments import decode_segment
from tests.support import RECORDS, one_patient_per_partition, read_all, service_settings, wait_for
from twin_engine.worker.service import TwinService


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_end_to_end_events_segments_annotations_dlq_restart(broker, tiny_model_dir, prefix, data_dir):
    model = TwinModel.load(tiny_model_dir)
    settings = service_settings(broker, prefix, data_dir=data_dir)
    svc = TwinService(settings, model)
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 30)

    pids = [f"bed-{i}" for i in range(3)]
    for pid, rec in zip(pids, RECORDS, strict=True):
        await svc.send_event(Event(f"reg-{pid}", pid, "register", CardiacState({"NORM": 1.0, "SR": 1.0}, 70),
                                   reference={"wfdb": rec}))
    await wait_for(lambda: all(p in svc.streams and svc.streams[p].p.next_seq >= 3 for p in pids))

    # AFIB on for bed-0, a heart-rate change for bed-1, then bad messages of several kinds
    afib = CardiacState({"AFIB": 1.0}, 120)
    await svc.send_event(Event("afib-on", "bed-0", "condition", afib))
    await svc.send_event(Event("afib-on", "bed-0", "condition", afib))  # re-delivery: applied once
    await svc.send_event(Event("hr-up", "bed-1", "condition", CardiacState({"NORM": 1.0, "SR": 1.0}, 140)))
    # scheduled 40 segments ahead (4 s at x10): it falls due across the restart below
    later_at = svc.streams["bed-2"].start_time(svc.streams["bed-2"].p.next_seq + 40)
    await svc.send_event(Event("afib-later", "bed-2", "condition", afib, effective_time=later_at))
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await prod.start()
    bad = [b"\xff\xfe not json", b'{"schema_version": 9}',
           json.dumps({"schema_version": 1, "event_id": "x1", "patient_id": "bed-2", "type": "condition",
                       "state": {"statements": {"NOPE": 1}}}).encode(),
           json.dumps({"schema_version": 1, "event_id": "x2", "patient_id": "ghost", "type": "condition",
                       "state": {"heart_rate": 80}}).encode(),
           json.dumps({"schema_version": 1, "event_id": "x3", "patient_id": "bed-2", "type": "register",
                       "state": {"heart_rate": 80}, "reference": {"samples": [[0.0] * 12] * 1000, "fs": 0}}).encode(),
           json.dumps({"schema_version": 1, "event_id": "x4", "patient_id": "bed-2", "type": "register",
                       "state": {"heart_rate": 80}, "reference": {"wfdb": f"../{RECORDS[0]}"}}).encode(),
           json.dumps({"schema_version": 1, "event_id": "x5", "patient_id": "bed-2", "type": "register",
                       "state": {"heart_rate": 80}, "reference": {"wfdb": []}}).encode(),
           json.dumps({"schema_version": 1, "event_id": "x6", "patient_id": "bed-2", "type": "register",
                       "state": {"heart_rate": 80},
                       "reference": {"samples": [[1e308] * 12] * 1000, "fs": 250}}).encode()]
    for i, raw in enumerate(bad):
        key = b"ghost" if i == 3 else b"bed-2"
        await prod.send_and_wait(settings.kafka.topic_events, raw, key=key)
    await prod.stop()
    change_seq = {}
    await wait_for(lambda: svc.streams["bed-0"].change is not None and svc.streams["bed-0"].change.first_seq is not None
                    and svc.streams["bed-1"].change is not None and svc.streams["bed-1"].change.first_seq is not None)
    change_seq = {p: svc.streams[p].change.first_seq for p in ("bed-0", "bed-1")}
    await wait_for(lambda: all(svc.streams[p].p.next_seq >= change_seq.get(p, 0) + 3 for p in pids))
    published_before_restart = {p: svc.streams[p].p.next_seq for p in pids}
    assert svc.registry.get("bed-0").seen_events.count("afib-on") == 1
    await svc.stop()

    # a new worker in the same group recovers every patient from the registry and carries on
    svc2 = TwinService(settings, model)
    await svc2.start()
    await asyncio.wait_for(svc2.ready.wait(), 30)
    await wait_for(lambda: all(p in svc2.streams for p in pids))
    assert svc2.registry.get("bed-0").state["statements"] == {"AFIB": 1.0}
    await wait_for(lambda: all(svc2.streams[p].p.next_seq >= published_before_restart[p] + 2 for p in pids))
    assert svc2.registry.get("bed-2").history[-1].at == pytest.approx(later_at, abs=1e-3)
    await wait_for(lambda: svc2.streams["bed-2"].p.published_event_id == "afib-later")
    await svc2.stop()

    bs = broker.bootstrap_servers
    segs = [decode_segment(m.value) for m in await read_all(bs, settings.kafka.topic_segments)]
    by_pid: dict[str, list] = {}
    for s in segs:
        by_pid.setdefault(s.patient_id, []).append(s)
    for pid in pids:
        seqs = [s.seq for s in by_pid[pid]]
        assert seqs == list(range(len(seqs))), f"{pid}: sequence numbers not consecutive: {seqs[:20]}"
        assert all(s.samples.shape == (250, 12) for s in by_pid[pid])
        starts = np.array([s.start_time for s in by_pid[pid]])
        assert np.all(np.diff(starts) > 0)
    # the changed patients carry the new state from the first segment after the change on
    for pid, eid in (("bed-0", "afib-on"), ("bed-1", "hr-up")):
        first = change_seq[pid]
        for s in by_pid[pid]:
            assert (s.event_id == eid) == (s.seq >= first), (pid, s.seq, s.event_id)
    assert by_pid["bed-0"][-1].state["statements"] == {"AFIB": 1.0}
    assert by_pid["bed-1"][-1].state["heart_rate"] == 140
    # the change scheduled ahead holds from the first segment at its time; the registry kept its
    # time through the restart (a restored stream makes what is still to come: test_scheduler)
    assert published_before_restart["bed-2"] <= next(s.seq for s in by_pid["bed-2"] if s.event_id == "afib-later")
    for s in by_pid["bed-2"]:
        assert s.event_id == ("afib-later" if s.start_time >= later_at - 1e-6 else "reg-bed-2"), (s.seq, s.event_id)

    # annotations: for each patient, intervals in order, matching the events
    anns = [json.loads(m.value) for m in await read_all(bs, settings.kafka.topic_annotations)]
    opened = {}
    for a in anns:
        if a["end_time"] is None:
            opened.setdefault(a["patient_id"], []).append(a)
    assert [a["event_id"] for a in opened["bed-0"]] == ["reg-bed-0", "afib-on"]
    assert [a["event_id"] for a in opened["bed-2"]] == ["reg-bed-2", "afib-later"]
    afib_ann = opened["bed-0"][1]
    assert afib_ann["start_seq"] == change_seq["bed-0"]
    first_afib = next(s for s in by_pid["bed-0"] if s.seq == change_seq["bed-0"])
    assert afib_ann["start_time"] == pytest.approx(first_afib.start_time, abs=1e-3)
    closed = [a for a in anns if a["patient_id"] == "bed-0" and a["end_time"] is not None]
    assert closed and closed[0]["event_id"] == "reg-bed-0" and closed[0]["end_time"] == pytest.approx(first_afib.start_time, abs=1e-3)

    # dead letters: every bad message, with a reason and the original bytes (cut past 64 kB,
    # its whole size and hash kept)
    dlq = [json.loads(m.value) for m in await read_all(bs, settings.kafka.topic_dead_letter)]
    originals = {d["original_sha256"]: d for d in dlq}
    for raw in bad:
        d = originals[hashlib.sha256(raw).hexdigest()]
        kept = base64.b64decode(d["original_b64"])
        assert d["original_bytes"] == len(raw) and (kept == raw or (d["truncated"] and raw.startswith(kept)))
    reasons = " | ".join(d["reason"] for d in dlq)
    assert "not JSON" in reasons and "schema_version" in reasons and "NOPE" in reasons and "unknown patient" in reasons
    assert "reference fs must be" in reasons and "internal error" not in reasons
    assert "lies outside the data directory" in reasons  # a network event names no file beyond data_dir
    assert "at least one record" in reasons and "out of range" in reasons  # no twin without a finite base vector


def test_continuity_boundary_jump(tiny_model_dir):
    """Joins between consecutive segments are no bigger than ordinary sample-to-sample steps."""
    from twin_engine.worker.generator import ContinuousGenerator, measure_continuity

    model = TwinModel.load(tiny_model_dir)
    gen = ContinuousGenerator(model, steps=2)
    base = np.ones(model.ibe.cfg.base_dim, np.float32) / np.sqrt(model.ibe.cfg.base_dim)
    m = measure_continuity(gen, base, CardiacState(), segments=6, segment_samples=250)
    assert m["boundary_jump_mean"] <= 2.0 * m["within_step_mean"]


async def test_registry_positions_are_small_and_restore_on_top_of_the_patient(broker, prefix):
    """Per-segment writes carry the stream position only; a restore combines it with the
    patient record written before it, and a removal forgets both."""
    from stream.kafka.topics import TopicSpec, ensure_topics
    from twin_engine.registry import Patient, Registry, partition_of
    from twin_engine.worker.generator import pack_tail

    topic, parts = f"{prefix}.registry", 4
    kw = {"bootstrap_servers": broker.bootstrap_servers}
    await ensure_topics(kw, [TopicSpec(topic, parts, compacted=True)], 1)
    prod = AIOKafkaProducer(acks="all", **kw)
    await prod.start()
    reg = Registry(prod, topic, parts)
    pids = [f"bed-{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    for pid in pids:
        p = Patient(pid, rng.standard_normal(256).tolist(), "v1", {"statements": {"NORM": 1.0}, "heart_rate": 70})
        for i in range(10):
            p.set_state(CardiacState({"AFIB": 1.0}, 100 + i), f"{pid}-e{i}", i, 1.7e9 + i)
        await (await reg.stage(p))  # durable
        for seq in range(1, 4):  # three published segments after the last state change
            p.next_seq, p.stream_start = seq, 1.7e9
            p.tail_b64 = pack_tail(rng.standard_normal((256, 12)).astype(np.float32))
            await reg.put_position(p)
    assert len(p.position_json()) < 0.6 * len(p.to_json())
    await reg.delete("bed-5")
    # damaged records (another producer's, a bad write) are skipped, never stop a restore: the
    # patient and position written before them stand
    good = json.loads(reg.get("bed-0").to_json())
    damaged = [(None, b"no key"), (b"\xff\xfe", b"{}"), (b"bed-0", b"not json"), (b"bed-0", b"[1, 2]"),
               (b"bed-0", json.dumps({**good, "base_vector": "abc"}).encode()),
               (b"bed-0", json.dumps({**good, "state": {"heart_rate": "fast"}}).encode()),
               (b"bed-0#position", json.dumps({"next_seq": "x"}).encode()), (b"bed-0#position", b"7"),
               (b"bed-0", b"[" * 200_000 + b"]" * 200_000), (b"bed-0#position", b"[" * 200_000 + b"]" * 200_000)]
    # a newer version's record, with a field this one does not know, is the patient's latest
    newer = (b"bed-1", json.dumps({**json.loads(reg.get("bed-1").to_json()), "state_event_id": "bed-1-newer",
                                   "from_a_newer_version": 1}).encode())
    for key, value in damaged:
        await prod.send_and_wait(topic, value, key=key, partition=partition_of("bed-0", parts))
    await prod.send_and_wait(topic, newer[1], key=newer[0], partition=partition_of("bed-1", parts))
    await prod.stop()

    fresh = Registry(None, topic, parts)
    owned = sorted({partition_of(pid, parts) for pid in pids[:3]})
    restored = await fresh.restore(kw, owned)
    assert set(restored) == {pid for pid in pids[:5] if partition_of(pid, parts) in owned}
    for pid in restored:
        q = fresh.get(pid)
        assert q.next_seq == 3 and q.tail_b64 == reg.get(pid).tail_b64
        assert q.state_event_id == (f"{pid}-e9" if pid != "bed-1" else "bed-1-newer")
        assert len(q.history) == 10 and len(q.base_vector) == 256
    everything = await Registry(None, topic, parts).restore(kw, list(range(parts)))
    assert sorted(everything) == pids[:5]


async def test_a_second_worker_takes_over_partitions_and_their_streams_carry_on(broker, tiny_model_dir, prefix, data_dir):
    """Scale-out: a worker joining the group takes some partitions; the patients on them move
    with their state and stream position (from the registry), no sequence number is skipped or
    repeated across the handoff, and events for a moved patient are applied by its new owner."""
    from twin_engine.registry import partition_of

    model = TwinModel.load(tiny_model_dir)
    settings = service_settings(broker, prefix, data_dir=data_dir)
    parts = settings.kafka.partitions
    pids = one_patient_per_partition(parts)
    a = TwinService(settings, model)
    await a.start()
    await asyncio.wait_for(a.ready.wait(), 30)
    for pid in pids:
        await a.send_event(Event(f"reg-{pid}", pid, "register", CardiacState({"NORM": 1.0}, 70),
                                 reference={"base_vector": np.eye(model.ibe.cfg.base_dim)[len(pid)].tolist()}))
    await wait_for(lambda: all(p in a.streams and a.streams[p].p.next_seq >= 2 for p in pids))

    b = TwinService(settings, model)
    await b.start()
    await wait_for(lambda: a.partitions.owned and b.partitions.owned and a.partitions.owned | b.partitions.owned == set(range(parts)), timeout=60)
    assert not a.partitions.owned & b.partitions.owned
    await wait_for(lambda: sorted(list(a.streams) + list(b.streams)) == sorted(pids))
    moved = sorted(b.streams)
    assert moved and all(partition_of(p, parts) in b.partitions.owned for p in moved)
    handoff = {p: b.streams[p].p.next_seq for p in moved}
    assert all(n >= 2 for n in handoff.values())  # carried on from the registry, not from 0
    # an event for a moved patient is consumed and applied by its new owner
    target = moved[0]
    await a.send_event(Event("afib-moved", target, "condition", CardiacState({"AFIB": 1.0}, 120)))
    await wait_for(lambda: b.streams[target].change is not None and b.streams[target].change.first_seq is not None)
    await wait_for(lambda: all(s.p.next_seq >= handoff.get(p, 0) + 2 for w in (a, b) for p, s in w.streams.items()))
    await a.stop()
    await b.stop()

    segs = [decode_segment(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_segments)]
    for pid in pids:
        seqs = [s.seq for s in segs if s.patient_id == pid]
        assert seqs == list(range(len(seqs))), f"{pid}: {seqs}"
    assert any(s.event_id == "afib-moved" for s in segs if s.patient_id == target)


async def _serving_one_patient(broker, tiny_model_dir, prefix: str, data_dir, reg_id: str, speed: float = 10.0):
    """A started service streaming bed-0 (registered by event ``reg_id``), two segments out."""
    settings = service_settings(broker, prefix, data_dir=data_dir, speed=speed)
    svc = TwinService(settings, TwinModel.load(tiny_model_dir))
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 30)
    await svc.send_event(Event(reg_id, "bed-0", "register", CardiacState({"NORM": 1.0}, 70),
                               reference={"wfdb": RECORDS[0]}))
    await wait_for(lambda: "bed-0" in svc.streams and svc.streams["bed-0"].p.next_seq >= 2)
    return svc, settings


def _lose_first_afib_write(svc, monkeypatch) -> list[str]:
    """The broker never acknowledges the first registry record in the AFIB state."""
    from aiokafka.errors import KafkaTimeoutError

    stage, failures = svc.registry.stage, []

    async def flaky_stage(p):
        if p.state["statements"] == {"AFIB": 1.0} and not failures:
            failures.append(p.patient_id)
            lost = asyncio.get_running_loop().create_future()
            lost.set_exception(KafkaTimeoutError())
            return lost
        return await stage(p)

    monkeypatch.setattr(svc.registry, "stage", flaky_stage)
    return failures


def _lose_first_delete(svc, monkeypatch) -> list[str]:
    """The broker never acknowledges the first registry tombstone."""
    from aiokafka.errors import KafkaTimeoutError

    delete, failures = svc.registry.delete, []

    async def flaky_delete(pid):
        if not failures:
            failures.append(pid)
            raise KafkaTimeoutError()
        await delete(pid)

    monkeypatch.setattr(svc.registry, "delete", flaky_delete)
    return failures


async def _committed(svc, settings, offset: int, timeout: float = 10.0) -> None:
    """Until bed-0's event partition is committed up to ``offset``: its events are durable."""
    from twin_engine.registry import partition_of

    tp = TopicPartition(settings.kafka.topic_events, partition_of("bed-0", settings.kafka.partitions))
    for _ in range(int(timeout / 0.1)):
        if await svc.consumer.committed(tp) == offset:
            return
        await asyncio.sleep(0.1)


async def test_a_segment_the_broker_did_not_take_is_sent_again(broker, tiny_model_dir, prefix, data_dir, monkeypatch):
    """A segment record whose delivery fails (the broker never acknowledged it) is not skipped:
    the stream's position stays, the segment goes again, and the topic holds every sequence
    number (at least once). Before, the record was lost and the stream moved on."""
    from aiokafka.errors import KafkaTimeoutError

    import twin_engine.worker.stream as scheduler

    monkeypatch.setattr(scheduler, "PUBLISH_RETRY_S", 0.05)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-b")
    send, failed = svc.producer.send, []

    async def flaky_send(topic, value=None, *args, **kw):
        if topic == settings.kafka.topic_segments and not failed:
            failed.append(json.loads(value)["seq"])
            lost = asyncio.get_running_loop().create_future()
            lost.set_exception(KafkaTimeoutError())
            return lost
        return await send(topic, value, *args, **kw)

    monkeypatch.setattr(svc.producer, "send", flaky_send)
    await wait_for(lambda: failed and svc.streams["bed-0"].p.next_seq >= failed[0] + 3)
    await svc.stop()
    assert svc.metrics.registry.get_sample_value("twin_publish_failures_total") == 1
    seqs = [decode_segment(m.value).seq for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_segments)]
    assert failed[0] in seqs and sorted(set(seqs)) == list(range(max(seqs) + 1)), (failed, seqs)


async def test_kafka_failing_while_an_event_is_applied_retries_it(broker, tiny_model_dir, prefix, data_dir, monkeypatch):
    """The registry write of a state change fails (Kafka unreachable): the event is neither
    dead-lettered nor lost. The consumer rewinds to it, applies it again after a back-off, makes
    it durable, and goes on consuming. Before, the error went to the dead-letter topic as an
    internal error, or (with the dead-letter write failing too) ended the consumer."""

    import twin_engine.worker.service as service
    from twin_engine.registry import Patient

    monkeypatch.setattr(service, "CONSUME_RETRY_S", 0.1)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-k")
    failures = _lose_first_afib_write(svc, monkeypatch)
    await svc.send_event(Event("afib-k", "bed-0", "condition", CardiacState({"AFIB": 1.0}, 120)))
    # committed past the AFIB event only once its record is durable, here by the retry alone
    # (no later event carries the state along)
    await _committed(svc, settings, 2)  # reg-k, afib-k
    assert failures == ["bed-0"] and svc.metrics.registry.get_sample_value("twin_event_kafka_errors_total") == 1
    await svc.send_event(Event("hr-k", "bed-0", "condition", CardiacState({"AFIB": 1.0}, 130)))
    await wait_for(lambda: svc.registry.get("bed-0").state["heart_rate"] == 130)
    await svc.stop()
    assert not await read_all(broker.bootstrap_servers, settings.kafka.topic_dead_letter)
    records = [Patient.from_json(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_registry)
               if m.key == b"bed-0" and m.value]
    assert [r.state_event_id for r in records] == ["reg-k", "afib-k", "hr-k"]


async def test_a_failed_write_before_a_removal_in_the_same_batch_is_retried_not_dead_lettered(
        broker, tiny_model_dir, prefix, data_dir, monkeypatch):
    """A state change whose registry write fails, and the patient's removal right behind it:
    the removal waits for the batch's writes, so the rewind re-applies both. Had the removal
    gone first, both events would come back for a patient no longer known: dead letters."""

    import twin_engine.worker.service as service

    monkeypatch.setattr(service, "CONSUME_RETRY_S", 0.1)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-r")
    failures = _lose_first_afib_write(svc, monkeypatch)
    await svc.send_events([Event("afib-r", "bed-0", "condition", CardiacState({"AFIB": 1.0}, 120)),
                           Event("rm-r", "bed-0", "remove")])
    await _committed(svc, settings, 3)  # past the removal: both events handled for good
    await svc.stop()
    assert failures == ["bed-0"] and svc.metrics.registry.get_sample_value("twin_event_kafka_errors_total") == 1
    assert svc.registry.get("bed-0") is None and "bed-0" not in svc.streams
    assert not await read_all(broker.bootstrap_servers, settings.kafka.topic_dead_letter)
    last = [m for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_registry) if m.key == b"bed-0"][-1]
    assert last.value is None  # the tombstone is the patient's last record


async def test_a_removal_applied_again_closes_the_annotation_once(broker, tiny_model_dir, prefix, data_dir, monkeypatch):
    """The registry delete of a removal fails: the removal is applied again, and the ground
    truth still gets one end for the patient's last state, not a second one with a later time."""
    import twin_engine.worker.service as service

    monkeypatch.setattr(service, "CONSUME_RETRY_S", 0.1)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-a")
    failures = _lose_first_delete(svc, monkeypatch)
    await svc.send_event(Event("rm-a", "bed-0", "remove"))
    await _committed(svc, settings, 2)  # reg-a, rm-a
    await svc.stop()
    assert failures == ["bed-0"] and svc.registry.get("bed-0") is None
    ends = [json.loads(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_annotations)
            if m.key == b"bed-0"]
    assert [a["event_id"] for a in ends if a["end_time"] is not None] == ["reg-a"]


async def test_a_scheduled_removal_ends_the_stream_at_its_time_across_a_restart(broker, tiny_model_dir, prefix,
                                                                               data_dir):
    """A remove event with an effective time ahead: the stream publishes every segment that
    starts before it and then the patient is removed (ground truth closed at the stream's end,
    a tombstone last in the registry), even though the service restarted in between: the
    scheduled time is in the patient's record."""
    # x2: the end comes 30 s later, after the restart (about 20 s, most of it the group join)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-s", speed=2.0)
    s = svc.streams["bed-0"]
    end = s.start_time(s.p.next_seq + 60) + 0.5  # mid-segment
    await svc.send_event(Event("rm-s", "bed-0", "remove", effective_time=end))
    await _committed(svc, settings, 2)  # reg-s, rm-s: the scheduled removal is durable
    assert svc.registry.get("bed-0").remove_at == end and "bed-0" in svc.streams
    assert svc.patient_view("bed-0")["remove_at"] == end
    await svc.stop()

    svc2 = TwinService(settings, TwinModel.load(tiny_model_dir))
    await svc2.start()
    await wait_for(lambda: "bed-0" in svc2.streams)  # restored, with its removal still to come
    await wait_for(lambda: svc2.registry.get("bed-0") is None and "bed-0" not in svc2.streams, timeout=60)
    await svc2.stop()
    bs = broker.bootstrap_servers
    segs = sorted((decode_segment(m.value) for m in await read_all(bs, settings.kafka.topic_segments)
                   if m.key == b"bed-0"), key=lambda g: g.seq)
    assert segs[-1].start_time < end <= segs[-1].start_time + segs[-1].duration  # the last one before the end
    ends = [json.loads(m.value) for m in await read_all(bs, settings.kafka.topic_annotations) if m.key == b"bed-0"]
    assert ends[-1]["end_time"] == pytest.approx(segs[-1].start_time + segs[-1].duration, abs=1e-3)
    last = [m for m in await read_all(bs, settings.kafka.topic_registry) if m.key == b"bed-0"][-1]
    assert last.value is None
    assert not await read_all(bs, settings.kafka.topic_dead_letter)


async def test_a_scheduled_removal_whose_delete_fails_is_retried(broker, tiny_model_dir, prefix, data_dir, monkeypatch):
    """The broker does not take the tombstone of a scheduled removal: it is tried again, the
    patient ends up removed, and its ground truth has one end."""
    import twin_engine.worker.service as service

    monkeypatch.setattr(service, "CONSUME_RETRY_S", 0.1)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-f")
    failures = _lose_first_delete(svc, monkeypatch)
    s = svc.streams["bed-0"]
    await svc.send_event(Event("rm-f", "bed-0", "remove", effective_time=s.start_time(s.p.next_seq + 5)))
    await wait_for(lambda: svc.registry.get("bed-0") is None)
    await svc.stop()
    assert failures == ["bed-0"] and svc.metrics.registry.get_sample_value("twin_event_kafka_errors_total") == 1 and "bed-0" not in svc.streams
    ends = [json.loads(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_annotations)
            if m.key == b"bed-0"]
    assert [a["event_id"] for a in ends if a["end_time"] is not None] == ["reg-f"]


async def test_a_removal_moved_later_after_the_stream_stopped_for_it_continues_the_stream(
        broker, tiny_model_dir, prefix, data_dir):
    """A second remove moves the end later just after the stream stopped at the first one's
    time (its removal waiting for the partition lock): the stream goes on, without a gap, to
    the new time, and only then is the patient removed."""
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-m")
    s = svc.streams["bed-0"]
    first_end = s.start_time(s.p.next_seq + 3)
    async with svc.lock:  # what the consumer holds while it applies events
        await svc.events.apply(Event("rm-m1", "bed-0", "remove", effective_time=first_end))
        await svc.events.confirm_writes()
        await wait_for(lambda: s.task.done())  # stopped at the first end; its removal waits for the lock
        assert svc.registry.get("bed-0") is not None and svc.streams["bed-0"] is s
        new_end = first_end + 3 * s.seconds
        await svc.events.apply(Event("rm-m2", "bed-0", "remove", effective_time=new_end))
        await svc.events.confirm_writes()
    await wait_for(lambda: svc.registry.get("bed-0") is None)
    await svc.stop()
    bs = broker.bootstrap_servers
    segs = sorted((decode_segment(m.value) for m in await read_all(bs, settings.kafka.topic_segments)
                   if m.key == b"bed-0"), key=lambda g: g.seq)
    assert [g.seq for g in segs] == list(range(len(segs)))
    assert segs[-1].start_time + segs[-1].duration == pytest.approx(new_end, abs=1e-3)
    ends = [json.loads(m.value) for m in await read_all(bs, settings.kafka.topic_annotations) if m.key == b"bed-0"]
    assert [a["end_time"] for a in ends if a["end_time"] is not None] == [pytest.approx(new_end, abs=1e-3)]


async def test_patients_whose_base_vector_does_not_fit_the_model_are_held_until_registered_again(
        broker, tiny_model_dir, distilled_model_dir, prefix, data_dir):
    """A model with another encoder (or another base vector size) does not stream restored
    patients under their old names: they stay in the registry, held, with the reason, until a
    new registration; a distilled student of the same model keeps them streaming."""
    import torch

    from twin_engine.metrics import scraped_value
    from twin_engine.registry import Patient

    old = TwinModel.load(tiny_model_dir)
    assert TwinModel.load(distilled_model_dir).encoder_id == old.encoder_id
    settings = service_settings(broker, prefix, data_dir=data_dir)
    svc = TwinService(settings, old)
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 30)
    for pid in ("bed-0", "bed-1"):
        await svc.send_event(Event(f"reg-{pid}", pid, "register", CardiacState({"NORM": 1.0}, 70),
                                   reference={"wfdb": RECORDS[0]}))
    await wait_for(lambda: all(p in svc.streams and svc.streams[p].p.next_seq >= 2 for p in ("bed-0", "bed-1")))
    await svc.stop()
    bed0 = svc.registry.get("bed-0")
    bed0_next = bed0.stream_start + bed0.next_seq * settings.segment_seconds  # where its next segment starts
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await prod.start()
    odd = Patient("bed-x", [0.5, 0.5, 0.5], "some-older-model", {"statements": {"NORM": 1.0}, "heart_rate": 70})
    await prod.send_and_wait(settings.kafka.topic_registry, odd.to_json(), key=b"bed-x")
    await prod.stop()

    new = TwinModel.load(tiny_model_dir)
    with torch.no_grad():
        next(new.ibe.parameters()).add_(0.01)  # retrained extractor: another space of base vectors
    assert new.encoder_id != old.encoder_id
    settings.segment_seconds *= 2  # and a new segment length with it
    svc = TwinService(settings, new)
    await svc.start()
    await asyncio.wait_for(svc.ready.wait(), 30)
    assert not svc.streams and sorted(svc.held) == ["bed-0", "bed-1", "bed-x"]
    assert f"encoder {old.encoder_id}" in svc.held["bed-0"] and "3 numbers" in svc.held["bed-x"]
    assert svc.patient_view("bed-1")["held"] == svc.held["bed-1"] and svc.patient_ids() == ["bed-0", "bed-1", "bed-x"]
    assert svc.patient_view("bed-1")["encoder_id"] == old.encoder_id
    assert scraped_value(svc.metrics.exposition().decode(), "twin_held_patients") == 3
    await svc.send_event(Event("afib-held", "bed-1", "condition", CardiacState({"AFIB": 1.0}, 120)))
    await svc.send_event(Event("reg-bed-0-again", "bed-0", "register", CardiacState({"NORM": 1.0}, 70),
                               reference={"wfdb": RECORDS[1]}))
    await svc.send_event(Event("rm-bed-x", "bed-x", "remove"))
    await wait_for(lambda: "bed-0" in svc.streams and svc.streams["bed-0"].p.next_seq >= 4 and "bed-x" not in svc.held)
    assert sorted(svc.held) == ["bed-1"] and svc.registry.get("bed-x") is None
    assert svc.registry.get("bed-0").encoder_id == new.encoder_id
    # registered again, its new state holds from where its next segment starts, not from
    # next_seq x the new segment length
    assert svc.registry.get("bed-0").history[-1].at == pytest.approx(bed0_next, abs=1e-6)
    await svc.stop()
    dlq = [json.loads(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_dead_letter)]
    assert any("afib-held" in base64.b64decode(d["original_b64"]).decode() and "is held" in d["reason"] for d in dlq)


async def test_a_patient_may_have_only_so_many_changes_scheduled_ahead(broker, tiny_model_dir, prefix, data_dir,
                                                                         monkeypatch):
    """The registry keeps every change still to come, so their number is capped: one more
    scheduled change is dead-lettered with the reason; a change for now still applies."""
    import twin_engine.registry.patient as registry

    monkeypatch.setattr(registry, "SCHEDULED_LIMIT", 3)
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-c")
    s = svc.streams["bed-0"]
    t = s.start_time(s.p.next_seq + 100)
    for i in range(4):
        await svc.send_event(Event(f"ahead-{i}", "bed-0", "condition", CardiacState({"SR": 1.0}, 80 + i),
                                   effective_time=t + i))
    await svc.send_event(Event("now-c", "bed-0", "condition", CardiacState({"AFIB": 1.0}, 120)))
    await wait_for(lambda: svc.streams["bed-0"].p.published_event_id == "now-c")
    await svc.stop()
    assert [h.event_id for h in svc.registry.get("bed-0").history if (h.at or 0) > t - 1] == [
        "ahead-0", "ahead-1", "ahead-2"]
    dlq = [json.loads(m.value) for m in await read_all(broker.bootstrap_servers, settings.kafka.topic_dead_letter)]
    assert len(dlq) == 1 and "ahead-3" in base64.b64decode(dlq[0]["original_b64"]).decode()
    assert "3 changes still to come" in dlq[0]["reason"]


async def test_an_accelerated_worker_restarted_goes_on_from_its_streams_time(broker, tiny_model_dir, prefix, data_dir):
    """At x10 stream time runs ahead of the wall clock; a restarted worker's clock starts from the
    wall clock again, and its restored streams would wait until it caught up (as long as the
    first run lasted). It goes on from where they were instead."""
    svc, settings = await _serving_one_patient(broker, tiny_model_dir, prefix, data_dir, "reg-a")
    s = svc.streams["bed-0"]
    await wait_for(lambda: s.p.next_seq >= 40)  # 40 s of stream time in about 4 s
    await svc.stop()
    last_start, n = s.start_time(s.p.next_seq - 1), s.p.next_seq
    settings.kafka.group_id += "-next"  # joins at once (Tansu keeps a stopped member ~13 s)
    svc2 = TwinService(settings, TwinModel.load(tiny_model_dir))
    await svc2.start()
    await asyncio.wait_for(svc2.ready.wait(), 30)
    assert last_start <= svc2.clock.now() < last_start + 20
    await wait_for(lambda: "bed-0" in svc2.streams and svc2.streams["bed-0"].p.next_seq >= n + 3, timeout=5)
    await svc2.stop()
