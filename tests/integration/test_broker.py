"""The embedded broker is a real Kafka-protocol server: aiokafka over TCP, groups and commits."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.kafka.topics import TopicSpec, ensure_topics


async def test_produce_consume_with_group_and_commit(broker):
    kw = {"bootstrap_servers": broker.bootstrap_servers}
    await ensure_topics(kw, [TopicSpec("t.foundation", 3)])
    admin = AIOKafkaAdminClient(**kw)
    await admin.start()
    meta = await admin.describe_topics(["t.foundation"])
    await admin.close()
    assert len(meta[0]["partitions"]) == 3

    prod = AIOKafkaProducer(**kw)
    await prod.start()
    for i in range(30):
        await prod.send_and_wait("t.foundation", f"v{i}".encode(), key=f"p{i % 7}".encode())
    await prod.stop()

    cons = AIOKafkaConsumer("t.foundation", group_id="g1", enable_auto_commit=False,
                            auto_offset_reset="earliest", **kw)
    await cons.start()
    got = []
    while len(got) < 30:
        batch = await cons.getmany(timeout_ms=2000)
        for msgs in batch.values():
            got.extend(m.value.decode() for m in msgs)
    await cons.commit()
    committed = {tp.partition: await cons.committed(tp) for tp in cons.assignment()}
    await cons.stop()
    assert sorted(got) == sorted(f"v{i}" for i in range(30))
    assert sum(committed.values()) == 30

    # a new member of the same group starts after the committed offsets: nothing left
    cons2 = AIOKafkaConsumer("t.foundation", group_id="g1", enable_auto_commit=False,
                             auto_offset_reset="earliest", **kw)
    await cons2.start()
    batch = await cons2.getmany(timeout_ms=1500)
    await cons2.stop()
    assert sum(len(v) for v in batch.values()) == 0
    assert TopicPartition("t.foundation", 0) in committed or committed


async def test_queued_producer_appends_each_record_about_once_in_send_order(broker, monkeypatch):
    """Many streams sending to one partition: aiokafka alone wakes every waiting sender when a
    full batch drains, and most of them retry (the CPU a worker lost with 10 s segments). Queued
    per partition, each record is appended about once, and all arrive in the order sent."""
    from aiokafka.producer import message_accumulator

    from stream.kafka.producer import QueuedProducer

    attempts = {"n": 0}
    append = message_accumulator.MessageBatch.append

    def counted(self, *args, **kwargs):
        attempts["n"] += 1
        return append(self, *args, **kwargs)

    monkeypatch.setattr(message_accumulator.MessageBatch, "append", counted)
    kw = {"bootstrap_servers": broker.bootstrap_servers}
    await ensure_topics(kw, [TopicSpec("t.queued", 2), TopicSpec("t.herd", 2)])
    n, size = 300, 16 * 1024

    async def send_all(prod, topic: str) -> int:
        attempts["n"] = 0
        await prod.start()
        try:
            futures = await asyncio.gather(*(prod.send(topic, b"%06d" % i + bytes(size), key=b"bed-1")
                                             for i in range(n)))
            await asyncio.gather(*futures)
        finally:
            await prod.stop()
        return attempts["n"]

    raw = await send_all(AIOKafkaProducer(**kw, max_batch_size=64 * 1024), "t.herd")
    queued = await send_all(QueuedProducer(2, kw, max_batch_size=64 * 1024), "t.queued")
    # 64 kB batches hold 3 records: one refused append per full batch, at most
    assert queued <= n + n // 3 + 2, (queued, raw)
    assert raw > 2 * queued, (queued, raw)  # the herd this avoids (aiokafka 0.14)

    cons = AIOKafkaConsumer("t.queued", auto_offset_reset="earliest", **kw)
    await cons.start()
    got: list[int] = []
    try:
        while len(got) < n:
            batch = await cons.getmany(timeout_ms=2000)
            assert batch, f"{len(got)} of {n} records"
            got.extend(int(m.value[:6]) for msgs in batch.values() for m in msgs)
    finally:
        await cons.stop()
    assert got == list(range(n))
