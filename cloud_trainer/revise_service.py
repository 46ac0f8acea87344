"""DC advanced inference as a service: speech hard examples in, revised segments out.

Its own consumer group on the hard-examples topic takes every audio hard example of the
edge ASR (:data:`topics.names.ASR_MODEL`), re-decodes it with
:class:`~cloud_trainer.speech_revise.SpeechReviser` (in a worker thread) and, when the reviser's
never-worse rule publishes it, sends a :class:`~topics.transcript.SpeechRevision` to
:data:`topics.names.KAFKA_SPEECH_REVISIONS`
(acks=all), keyed by the edge node, and the revised text as a ``dc:<model>`` label of the
sample (training data for vocabulary adaptation; the store never lets it replace an
operator's label). An operator's label of a speech sample (``edge-offload label``, on the
labels topic) becomes revision 2 of the segment, ``source: operator``, addressed to every
edge (node ""). Offsets are committed after the revisions of a batch are
acknowledged: a crash re-decodes, never loses (the edge ignores a revision it already
published). Records that cannot be decoded or revised are counted and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from cloud_trainer.asr_adapt import pcm_to_float
from cloud_trainer.speech_revise import SpeechReviser
from common import tracing
from common.kafka_clients import make_consumer, make_producer
from common.retry import Restarter
from common.settings import KafkaSettings
from common.tracing import kafka_headers
from models.whisper_asr import AsrResult
from topics.codec import ContractError, now_ms
from topics.dc import MAX_HARD_EXAMPLE_BYTES, HardExample, Label, decode_hard_example, decode_label, encode_label
from topics.names import ASR_MODEL, KAFKA_HARD_EXAMPLES, KAFKA_LABELS, KAFKA_SPEECH_REVISIONS
from topics.transcript import ModelRef, SpeechRevision, TranscriptWord, encode_revision

__all__ = ["RevisionStats", "RevisionService", "revision_of", "DC_REVISION", "OPERATOR_REVISION"]

DC_REVISION = 1
OPERATOR_REVISION = 2  # an operator's transcript overrides the DC's

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RevisionStats:
    records: int = 0
    revised: int = 0
    skipped: int = 0  # not speech of the edge ASR
    bad: int = 0  # undecodable record or stream name
    errors: int = 0  # decoding raised
    kept: int = 0  # the edge's hypothesis stood: nothing published
    with_context: int = 0  # speech examples that carried neighbouring audio (hard example v2 lead_s/tail_s)
    restarts: int = 0
    seconds: float = 0.0


def revision_of(example: HardExample, reviser: SpeechReviser) -> SpeechRevision | None:
    """Re-decode one speech hard example (blocking: run it in a thread); None when the edge's
    hypothesis stands (the reviser's never-worse rule publishes nothing then). The example's
    lead/tail audio is decoded with it; only words within the utterance are kept."""
    conversation, _, leg = (example.stream or "").rpartition(".")
    if not conversation or not leg:
        raise ContractError("bad_field", f"stream {example.stream!r} is not conversation.leg")
    clip = pcm_to_float(example.data)
    edge = AsrResult(example.result, (), min(example.confidences, default=0.0))
    rev = reviser.revise(conversation, clip, edge, lead_s=example.lead_s, tail_s=example.tail_s)
    if not rev.published:
        return None
    r = rev.result
    return SpeechRevision(
        key=example.key, node=example.node, conversation=conversation, leg=leg, utterance=example.seq,
        revision=DC_REVISION, text=r.text,
        words=tuple(TranscriptWord(w.word, w.start_s, w.end_s, w.confidence) for w in r.words),
        confidence=r.confidence, model=ModelRef(rev.model, rev.version), source="dc",
        created_at_ms=now_ms())


class RevisionService:
    """Consumes speech hard examples, produces revisions. ``await run(stop)``."""

    def __init__(self, kafka: KafkaSettings, reviser: SpeechReviser, group_id: str = "cloud-reviser",
                 model: str = ASR_MODEL, commit_timeout_s: float = 10.0) -> None:
        self.kafka = kafka
        self.reviser = reviser
        self.group_id = group_id
        self.model = model
        self.commit_timeout_s = commit_timeout_s
        self.stats = RevisionStats()
        self._progress = asyncio.Condition()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every batch of records."""
        async with self._progress:
            await self._progress.wait_for(predicate)

    async def _batch(self, producer: AIOKafkaProducer,
                     records: list[tuple[str, bytes | None]] | list[tuple[str, bytes | None, str | None]]) -> None:
        """Revise a batch of (topic, value[, traceparent]) records; each answer continues its record's trace."""
        sends = []
        for record in records:
            topic, value = record[0], record[1]
            trace = record[2] if len(record) > 2 else None
            self.stats.records += 1
            if topic == KAFKA_LABELS:
                rev = self._operator_revision(value)
                if rev is not None:
                    try:
                        payload = encode_revision(rev)
                    except (ContractError, ValueError):  # ids that are not ids
                        self.stats.bad += 1
                        continue
                    sends.append(await producer.send(KAFKA_SPEECH_REVISIONS, payload, key=b"",
                                                     headers=kafka_headers(payload, tracing.child(trace))))
                continue
            try:
                if value is None:
                    raise ContractError("empty", "record without a value")
                ex = decode_hard_example(value)
            except ContractError:
                self.stats.bad += 1
                continue
            if ex.kind != "audio" or ex.model != self.model:
                self.stats.skipped += 1
                continue
            if ex.lead_s > 0 or ex.tail_s > 0:
                self.stats.with_context += 1
            t0 = time.perf_counter()
            try:
                rev = await asyncio.to_thread(revision_of, ex, self.reviser)
            except ContractError:
                self.stats.bad += 1
                continue
            except Exception:
                self.stats.errors += 1
                log.exception("reviser: decoding %s failed", ex.key)
                continue
            self.stats.seconds += time.perf_counter() - t0
            if rev is None:
                self.stats.kept += 1
                continue
            payload = encode_revision(rev)
            sends.append(await producer.send(KAFKA_SPEECH_REVISIONS, payload, key=rev.node.encode(),
                                             headers=kafka_headers(payload, tracing.child(trace))))
            if rev.text:  # the DC transcript becomes training data (an operator's label still wins)
                label = encode_label(Label(rev.key, rev.text, f"dc:{rev.model.name}", rev.created_at_ms))
                sends.append(await producer.send(KAFKA_LABELS, label, key=rev.key.encode(),
                                                 headers=kafka_headers(label, tracing.child(trace))))
        for fut in sends:
            await fut  # acks=all before the offsets move
        self.stats.revised += sum(1 for f in sends if f.result().topic == KAFKA_SPEECH_REVISIONS)

    def _operator_revision(self, value: bytes | None) -> SpeechRevision | None:
        """An operator's transcript of a speech sample -> revision 2 of its segment (for every edge:
        only the one that published the segment knows it)."""
        try:
            if value is None:
                raise ContractError("empty", "record without a value")
            label = decode_label(value)
        except ContractError:
            self.stats.bad += 1
            return None
        model, _, stream, seq, _ = label.key.split("|")
        conversation, _, leg = stream.rpartition(".")
        if not label.source.startswith("operator:") or model != self.model or not conversation or not seq.isdigit():
            return None
        return SpeechRevision(key=label.key, node="", conversation=conversation, leg=leg, utterance=int(seq),
                              revision=OPERATOR_REVISION, text=label.text, words=(), confidence=1.0,
                              model=ModelRef("operator", label.source), source="operator",
                              created_at_ms=label.labelled_at_ms)

    async def run(self, stop: asyncio.Event) -> None:
        def counted(_: BaseException) -> None:
            self.stats.restarts += 1

        restarter = Restarter("reviser", log, 1.0, 1.0, on_restart=counted)  # Kafka trouble: rebuild, never crash

        async def revise() -> None:
            consumer = producer = None
            try:
                producer = make_producer(self.kafka, client_id=f"{self.kafka.client_id}-reviser", acks="all",
                                         enable_idempotence=self.kafka.enable_idempotence)
                await producer.start()
                consumer = make_consumer(
                    self.kafka, KAFKA_HARD_EXAMPLES, KAFKA_LABELS,
                    client_id=f"{self.kafka.client_id}-reviser", group_id=self.group_id,
                    enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=16,
                    max_partition_fetch_bytes=MAX_HARD_EXAMPLE_BYTES + (64 << 10), metadata_max_age_ms=5000)
                await consumer.start()
                restarter.healthy()
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500)
                    records = [r for rs in batch.values() for r in rs]
                    if not records:
                        continue
                    await self._batch(producer, [(r.topic, r.value, tracing.from_headers(r.headers))
                                                 for r in records])
                    async with self._progress:
                        self._progress.notify_all()
                    offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}
                    await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout_s)
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        try:
                            await asyncio.wait_for(client.stop(), 5.0)
                        except Exception:
                            pass

        await restarter.run(revise, stop)
