"""Helpers for tests that read what was produced to a real Kafka-protocol broker."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from common.kafka_admin import ensure_topics


async def read_topic(bootstrap: str, topic: str, want: int) -> list[bytes]:
    """The first ``want`` messages of ``topic`` (no group: Tansu delays every group join by 5 s)."""
    await ensure_topics(bootstrap, [topic])  # so this consumer knows its partitions from the start
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got: list[bytes] = []
    try:
        while len(got) < want:
            batch = await consumer.getmany(timeout_ms=500)
            got += [r.value for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return got
