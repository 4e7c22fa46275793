"""The embedded broker is a real Kafka-protocol server: aiokafka over TCP, groups and commits."""

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from twin_engine.broker import TopicSpec, ensure_topics


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
