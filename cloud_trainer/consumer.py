"""Consumes hard examples and labels into the sample store (at-least-once).

One consumer group reads the hard-examples and labels topics. A fetched batch is stored
(idempotently) first and its offsets are committed after, so a crash between the two
replays the batch and the store keeps one copy. Undecodable records are dead-lettered in
the store and committed: they can never succeed. A store failure commits nothing: the
consumer is rebuilt and resumes from the last committed offsets. A commit refused after a
rebalance is counted and skipped: the consumer rejoins by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from cloud_trainer.store import SampleStore
from common.kafka_clients import make_consumer
from common.retry import Restarter
from common.settings import KafkaSettings
from topics.codec import ContractError
from topics.dc import MAX_HARD_EXAMPLE_BYTES, HardExample, Label, decode_hard_example, decode_label
from topics.names import KAFKA_HARD_EXAMPLES, KAFKA_LABELS

__all__ = ["ConsumerStats", "SampleConsumer"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ConsumerStats:
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    labels: int = 0
    dead_lettered: int = 0
    commits: int = 0
    commit_failures: int = 0
    restarts: int = 0


class SampleConsumer:
    """Moves hard examples and labels from Kafka into ``store``."""

    def __init__(self, store: SampleStore, kafka: KafkaSettings, group_id: str,
                 max_poll_records: int = 500, on_batch: Callable[[], None] | None = None,
                 commit_timeout_s: float = 10.0, metadata_max_age_ms: int = 5000) -> None:
        self.store = store
        self.kafka = kafka
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self.on_batch = on_batch
        self.commit_timeout_s = commit_timeout_s
        self.metadata_max_age_ms = metadata_max_age_ms
        self.stats = ConsumerStats()
        self._progress = asyncio.Condition()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every stored batch."""
        async with self._progress:
            await self._progress.wait_for(predicate)

    def _consumer(self) -> AIOKafkaConsumer:
        return make_consumer(
            self.kafka, KAFKA_HARD_EXAMPLES, KAFKA_LABELS,
            client_id=f"{self.kafka.client_id}-trainer",
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_poll_records,
            max_partition_fetch_bytes=MAX_HARD_EXAMPLE_BYTES + (64 << 10),
            metadata_max_age_ms=self.metadata_max_age_ms,  # find partitions added to the topics soon
        )

    async def _store_batch(self, records: list[tuple[str, int, int, bytes | None]]) -> None:
        examples: list[HardExample] = []
        labels: list[Label] = []
        for topic, partition, offset, value in records:
            origin = f"{topic}/{partition}@{offset}"
            try:
                if value is None:
                    raise ContractError("empty", "record without a value")
                if topic == KAFKA_LABELS:
                    labels.append(decode_label(value))
                else:
                    examples.append(decode_hard_example(value))
            except ContractError as exc:
                await self.store.dead_letter(origin, exc.reason, exc.detail, value or b"")
                self.stats.dead_lettered += 1
        if examples:
            added = await self.store.add_many(examples)
            self.stats.stored += added
            self.stats.duplicates += len(examples) - added
        if labels:
            await self.store.set_labels(labels)
            self.stats.labels += len(labels)
        self.stats.records += len(records)

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=1000))
                await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    return
                batch = fetch.result()
                records = [(r.topic, r.partition, r.offset, r.value) for rs in batch.values() for r in rs]
                if not records:
                    continue
                await self._store_batch(records)  # raises on store trouble: nothing is committed
                # Commit exactly what was stored, and only partitions that had records.
                offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}
                try:
                    await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout_s)
                    self.stats.commits += 1
                except CommitFailedError as exc:
                    # The group rebalanced (e.g. the broker restarted); the consumer rejoins by
                    # itself. The batch is stored: if it is redelivered, the store deduplicates it.
                    self.stats.commit_failures += 1
                    log.warning("trainer: commit failed after a rebalance (%s); continuing", exc)
                except (TimeoutError, KafkaError) as exc:
                    self.stats.commit_failures += 1
                    log.warning("trainer: commit failed (%s: %s); rebuilding the consumer",
                                type(exc).__name__, exc)
                    raise
                if self.on_batch is not None:
                    self.on_batch()
                async with self._progress:
                    self._progress.notify_all()
        finally:
            stopper.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; reconnects and rebuilds itself on failures."""
        def counted(_: BaseException) -> None:
            self.stats.restarts += 1

        # Kafka, network or store trouble: rebuild, never crash
        restarter = Restarter("trainer consumer", log, 1.0, 1.0, on_restart=counted)

        async def consume() -> None:
            consumer: AIOKafkaConsumer | None = None
            try:
                consumer = self._consumer()
                await consumer.start()
                restarter.healthy()
                await self._consume(consumer, stop)
            finally:
                if consumer is not None:
                    try:
                        await asyncio.wait_for(consumer.stop(), 5.0)
                    except (TimeoutError, KafkaError, OSError):
                        log.debug("consumer did not stop cleanly", exc_info=True)

        await restarter.run(consume, stop)
