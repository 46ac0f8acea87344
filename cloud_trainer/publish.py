"""Announcing model versions on the model-updates topic (keyed by model name)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from common.kafka_clients import make_producer
from common.settings import KafkaSettings
from common.tracing import kafka_headers
from topics.dc import MAX_MODEL_UPDATE_BYTES, Label, ModelUpdate, encode_label, encode_model_update
from topics.names import KAFKA_LABELS, KAFKA_MODEL_UPDATES

__all__ = ["UpdatePublisher", "announce_once", "publish_labels"]


class UpdatePublisher:
    """A producer for model-update announcements (acks=all)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = make_producer(
            self.kafka, client_id=f"{self.kafka.client_id}-updates",
            acks="all", enable_idempotence=self.kafka.enable_idempotence,
            max_request_size=MAX_MODEL_UPDATE_BYTES + (1 << 20))
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def announce(self, update: ModelUpdate) -> int:
        """Publish one announcement; return its offset once Kafka acknowledged it."""
        if self._producer is None:
            raise RuntimeError("UpdatePublisher not started")
        payload = encode_model_update(update)
        meta = await self._producer.send_and_wait(KAFKA_MODEL_UPDATES, payload, key=update.name.encode(),
                                                  headers=kafka_headers(payload))
        return int(meta.offset)


async def announce_once(kafka: KafkaSettings, update: ModelUpdate) -> int:
    """Publish one announcement with a short-lived producer (CLI)."""
    publisher = UpdatePublisher(kafka)
    await publisher.start()
    try:
        return await publisher.announce(update)
    finally:
        await publisher.stop()


async def publish_labels(kafka: KafkaSettings, labels: Sequence[Label]) -> None:
    """Send operator labels to the labels topic (acks=all), keyed by sample key."""
    producer = make_producer(kafka, client_id=f"{kafka.client_id}-labels",
                                acks="all", enable_idempotence=kafka.enable_idempotence)
    await producer.start()
    try:
        payloads = [(lb.key, encode_label(lb)) for lb in labels]
        futures = [await producer.send(KAFKA_LABELS, p, key=key.encode(), headers=kafka_headers(p))
                   for key, p in payloads]
        await asyncio.gather(*futures)  # raises unless every label was acknowledged
    finally:
        await producer.stop()
