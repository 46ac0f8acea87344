"""DC revisions of published segments, back to the operators.

- :class:`SegmentIndex`: the last ``capacity`` segments this edge published, by
  (conversation, leg, utterance), and the revision each is at.
- :func:`revised_segment`: a published segment plus a :class:`SpeechRevision` -> the same
  segment (conversation, leg, utterance, seq, speaker) with the DC's words on the
  conversation clock, ``revision`` and ``source`` from the DC, the DC's model.
- :class:`RevisionFollower`: follows :data:`topics.names.KAFKA_SPEECH_REVISIONS` (a consumer
  group per node, auto-commit: a lost revision costs a better transcript, never a result),
  keeps this node's revisions (and those for every node: operators' labels) and hands them
  to ``on_revision``. Undecodable records are
  counted and skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from common import tracing
from common.kafka_clients import make_consumer
from common.retry import Restarter
from common.settings import KafkaSettings
from topics.codec import ContractError
from topics.names import KAFKA_SPEECH_REVISIONS
from topics.transcript import SpeechRevision, TranscriptSegment, TranscriptWord, decode_revision

__all__ = ["SegmentIndex", "revised_segment", "RevisionFollower", "FollowerStats"]

log = logging.getLogger(__name__)


def revised_segment(original: TranscriptSegment, rev: SpeechRevision) -> TranscriptSegment:
    """``original`` as the DC revised it (word times moved onto the conversation clock)."""
    t0 = original.utterance_start_s
    words = tuple(TranscriptWord(w.word, t0 + w.start_s, t0 + w.end_s, w.confidence) for w in rev.words)
    return dataclasses.replace(
        original, text=rev.text, words=words, confidence=rev.confidence, model=rev.model,
        revision=rev.revision, source=rev.source, latency_ms=0.0,
        start_s=words[0].start_s if words else original.start_s,
        end_s=max(words[-1].end_s, words[0].start_s) if words else original.end_s)


class SegmentIndex:
    """Recently published segments by (conversation, leg, utterance). Thread-safe, bounded."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str, int], TranscriptSegment] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, seg: TranscriptSegment) -> None:
        key = (seg.conversation, seg.leg, seg.utterance)
        with self._lock:
            if key in self._items and self._items[key].revision >= seg.revision:
                return  # the first segment of an utterance names it; older revisions never win
            self._items[key] = seg
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def apply(self, rev: SpeechRevision) -> TranscriptSegment | None:
        """The revised segment to publish, or None (unknown segment, or not newer)."""
        key = (rev.conversation, rev.leg, rev.utterance)
        with self._lock:
            original = self._items.get(key)
            if original is None or original.revision >= rev.revision:
                return None
            seg = revised_segment(original, rev)
            self._items[key] = seg
            return seg


@dataclass(slots=True)
class FollowerStats:
    received: int = 0
    for_other_nodes: int = 0
    bad: int = 0
    restarts: int = 0


class RevisionFollower:
    """This node's revisions from Kafka -> ``on_revision`` (awaited in order); a component."""

    name = "revisions"

    def __init__(self, kafka: KafkaSettings, node: str,
                 on_revision: Callable[[SpeechRevision], Awaitable[object]]) -> None:
        self.kafka = kafka
        self.node = node
        self.on_revision = on_revision
        self.stats = FollowerStats()
        self.connected = asyncio.Event()  # set once the consumer has started

    def ready(self) -> bool:
        return True  # following revisions is optional to the edge: it serves without Kafka

    def live(self) -> bool:
        return True

    async def run(self, stop: asyncio.Event) -> None:
        def counted(_: BaseException) -> None:
            self.stats.restarts += 1

        restarter = Restarter("revisions", log, 1.0, 1.0, on_restart=counted)  # Kafka trouble: rebuild, never crash

        async def follow() -> None:
            consumer: AIOKafkaConsumer | None = None
            try:
                consumer = make_consumer(
                    self.kafka, KAFKA_SPEECH_REVISIONS,
                    client_id=f"{self.kafka.client_id}-revisions", group_id=f"edge-revisions-{self.node}",
                    enable_auto_commit=True, auto_offset_reset="earliest", metadata_max_age_ms=5000)
                await consumer.start()  # old revisions of unknown segments are ignored by the index
                self.connected.set()
                restarter.healthy()
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for r in records:
                            with tracing.use(tracing.from_headers(r.headers)):  # the DC's trace, back out
                                await self._handle(r.value)
            finally:
                if consumer is not None:
                    try:
                        await asyncio.wait_for(consumer.stop(), 5.0)
                    except Exception:
                        pass

        await restarter.run(follow, stop)

    async def _handle(self, value: bytes | None) -> None:
        self.stats.received += 1
        try:
            if value is None:
                raise ContractError("empty", "record without a value")
            rev = decode_revision(value)
        except ContractError as exc:
            self.stats.bad += 1
            log.warning("revisions: bad record (%s)", exc)
            return
        if rev.node not in (self.node, ""):  # "": for every edge (an operator's label)
            self.stats.for_other_nodes += 1
            return
        await self.on_revision(rev)
