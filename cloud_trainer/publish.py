"""Announcing model versions on the model-updates topic (keyed by model name)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from edge_offload.kafka_admin import ensure_topics
from edge_offload.settings import KafkaSettings
from topics.dc import MAX_MODEL_UPDATE_BYTES, ModelUpdate, encode_model_update
from topics.names import KAFKA_MODEL_UPDATES

__all__ = ["UpdatePublisher", "announce_once"]


class UpdatePublisher:
    """A producer for model-update announcements (acks=all)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await ensure_topics(self.kafka.bootstrap_servers, [KAFKA_MODEL_UPDATES])
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers, client_id=f"{self.kafka.client_id}-updates",
            acks="all", enable_idempotence=self.kafka.enable_idempotence,
            max_request_size=MAX_MODEL_UPDATE_BYTES + (1 << 20))
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def announce(self, update: ModelUpdate) -> int:
        """Publish one announcement; return its offset once Kafka acknowledged it."""
        if self._producer is None:
            raise RuntimeError("UpdatePublisher not started")
        meta = await self._producer.send_and_wait(
            KAFKA_MODEL_UPDATES, encode_model_update(update), key=update.name.encode())
        return int(meta.offset)


async def announce_once(kafka: KafkaSettings, update: ModelUpdate) -> int:
    """Publish one announcement with a short-lived producer (CLI)."""
    publisher = UpdatePublisher(kafka)
    await publisher.start()
    try:
        return await publisher.announce(update)
    finally:
        await publisher.stop()
