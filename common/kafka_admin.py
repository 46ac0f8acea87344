"""Kafka topic set-up shared by the edge agent and the DC trainer."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.admin import NewTopic

from common.kafka_clients import make_admin
from common.settings import KafkaSettings

__all__ = ["ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(kafka: KafkaSettings | str, names: Sequence[str], *, partitions: int = 1,
                        replication: int = 1, client_id: str = "edge-offload-admin") -> None:
    """Create the topics that do not exist yet (an existing topic is left as it is).

    ``kafka``: the settings (SSL/SASL included), or a bootstrap string for a plaintext broker."""
    settings = KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
    admin = make_admin(settings, client_id=client_id)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(n, partitions, replication) for n in names])
        for topic, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"creating Kafka topic {topic} failed: {code} {message}")
    finally:
        await admin.close()
