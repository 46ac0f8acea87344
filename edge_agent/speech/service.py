"""The speech service: RTP call legs over MQTT -> live partials and final, speaker-labelled segments.

- :class:`SpeechEngine` (no MQTT): one bounded queue and one serial worker per leg. The
  worker hands batches of packets to a thread pool (``LegDecoder`` -> VAD -> ASR ->
  diarization all run there, never on the event loop); one leg never has two batches in
  flight, so its objects are used by one thread at a time. A full leg queue drops the packet
  (counted, the jitter buffer conceals it like network loss). Legs idle for
  ``idle_close_s`` are closed (their speech in progress finished); a conversation ends with
  its last leg.
- :class:`SpeechService`: the engine behind an aiomqtt MQTT v5 client. Subscribes to
  :data:`topics.names.AUDIO_FILTER` (QoS 1, not shared: every packet of a leg must reach the
  same agent), publishes partials (QoS 0) on ``partial_transcript(conversation)``, segments
  (QoS 1) on ``transcript(conversation)`` and rejected packets as dead letters (stage
  ``audio``). Reconnects with backoff; legs survive a reconnect.

Times: packets are stamped with ``clock()`` (Unix seconds) when they reach the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import numpy as np

from edge_agent.metrics import BucketCounts
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.pipeline import ConversationTracker, LegStream, PipelineConfig, StepOutput, Utterance
from edge_offload.mqtt_security import aiomqtt_connection
from edge_agent.speech.revisions import SegmentIndex
from edge_offload.settings import Settings, SpeechServiceConfig
from models.edge_asr import AsrVocabulary, EdgeAsr, load_edge_asr, prompt_from_sentences
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from topics import names
from topics.deadletter import DeadLetter, encode_dead_letter
from topics.transcript import SpeechRevision, encode_partial, encode_segment

__all__ = [
    "SpeechServiceConfig",
    "SpeechCounters",
    "SpeechEngine",
    "SpeechService",
    "run_speech_service",
    "parse_audio_topic",
    "register_metrics",
]

log = logging.getLogger(__name__)

AsrSource = Callable[[], EdgeAsr]
UtteranceHook = Callable[[str, Utterance], None]
"""Called in the worker thread with the leg's topic and each finished utterance (hard-example mining)."""


@dataclass
class SpeechCounters:
    """What the service did, as plain attributes (exported as ``edge_speech_*``)."""

    packets_received: int = 0
    packets_overload: int = 0
    packets_rejected: dict[str, int] = field(default_factory=dict)
    bad_topics: int = 0
    legs_opened: int = 0
    legs_closed: int = 0
    legs_refused: int = 0
    conversations_opened: int = 0
    conversations_closed: int = 0
    partials_published: int = 0
    segments_published: int = 0
    dead_letters_published: int = 0
    publish_errors: int = 0
    worker_errors: int = 0
    reconnects: int = 0
    revisions_published: int = 0
    revisions_unknown: int = 0
    partial_latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    final_latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    partial_latency_hist: BucketCounts = field(default_factory=BucketCounts)  # every one, exported
    final_latency_hist: BucketCounts = field(default_factory=BucketCounts)

    @staticmethod
    def p95(values: deque[float]) -> float:
        return float(np.percentile(np.fromiter(values, float), 95)) if values else 0.0


def register_metrics(counters: SpeechCounters, registry: object) -> None:
    """Expose ``counters`` on a prometheus_client registry as ``edge_speech_*`` metrics."""
    from prometheus_client.core import CounterMetricFamily

    class _Collector:
        def collect(self) -> object:
            c = counters
            for name, value, doc in (
                ("packets_received", c.packets_received, "RTP packets received"),
                ("packets_overload", c.packets_overload, "packets dropped: leg queue full"),
                ("bad_topics", c.bad_topics, "messages on malformed audio topics"),
                ("legs_opened", c.legs_opened, "call legs opened"),
                ("legs_closed", c.legs_closed, "call legs closed"),
                ("legs_refused", c.legs_refused, "packets of legs refused: max_legs reached"),
                ("conversations_opened", c.conversations_opened, "conversations opened"),
                ("conversations_closed", c.conversations_closed, "conversations closed"),
                ("partials_published", c.partials_published, "partial transcripts published"),
                ("segments_published", c.segments_published, "final segments published"),
                ("dead_letters_published", c.dead_letters_published, "rejected packets dead-lettered"),
                ("publish_errors", c.publish_errors, "publishes that failed"),
                ("worker_errors", c.worker_errors, "pipeline steps that raised"),
                ("reconnects", c.reconnects, "MQTT reconnects"),
                ("revisions_published", c.revisions_published, "DC revisions of segments published"),
                ("revisions_unknown", c.revisions_unknown, "DC revisions of segments not (or no longer) known"),
            ):
                yield CounterMetricFamily(f"edge_speech_{name}", doc, value=value)
            rejected = CounterMetricFamily("edge_speech_packets_rejected", "RTP packets rejected", labels=["reason"])
            for reason, n in sorted(c.packets_rejected.items()):
                rejected.add_metric([reason], n)
            yield rejected
            yield c.partial_latency_hist.family("edge_speech_partial_latency_seconds",
                                                "audio arrival -> partial published")
            yield c.final_latency_hist.family("edge_speech_final_latency_seconds",
                                              "end of speech arrival -> segment published")

    registry.register(_Collector())  # type: ignore[attr-defined]


def parse_audio_topic(topic: str) -> tuple[str, str, str]:
    """``offload/v1/audio/{device}/{conversation}/{leg}`` -> (device, conversation, leg)."""
    parts = topic.split("/")
    prefix = names.ROOT.split("/")
    if len(parts) != len(prefix) + 4 or parts[:len(prefix)] != prefix or parts[len(prefix)] != "audio":
        raise ValueError(f"not an audio topic: {topic!r}")
    device, conversation, leg = parts[-3:]
    names.check_id(device, "device")
    names.check_id(conversation, "conversation")
    names.check_id(leg, "leg")
    return device, conversation, leg


# ------------------------------------------------------------------------------ engine

Sink = Callable[[StepOutput, str], Awaitable[None]]  # (output, audio topic it came from)


@dataclass
class _Conversation:
    tracker: ConversationTracker
    legs: set[str] = field(default_factory=set)


@dataclass
class _Leg:
    conversation: str
    leg: str
    topic: str
    queue: asyncio.Queue[tuple[bytes, float]]
    last_arrival_s: float
    stream: LegStream | None = None
    task: asyncio.Task[None] | None = None


class SpeechEngine:
    """Per-leg serial workers over a shared thread pool; results go to ``sink``."""

    def __init__(self, *, vad: SileroVad, encoder: SpeakerEncoder, asr: EdgeAsr | AsrSource, sink: Sink,
                 config: SpeechServiceConfig | None = None, pipeline: PipelineConfig | None = None,
                 counters: SpeechCounters | None = None, clock: Callable[[], float] = time.time,
                 on_utterance: UtteranceHook | None = None) -> None:
        self.config = config or SpeechServiceConfig()
        self.pipeline = pipeline or PipelineConfig()
        self.vad = vad
        self.encoder = encoder
        self._asr: AsrSource = asr if callable(asr) else (lambda: asr)  # type: ignore[assignment,return-value]
        self.sink = sink
        self.counters = counters or SpeechCounters()
        self.clock = clock
        self.on_utterance = on_utterance
        self._pool = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="speech")
        self._legs: dict[tuple[str, str], _Leg] = {}
        self._conversations: dict[str, _Conversation] = {}
        self._closed_conversations: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.segments_by_conversation: dict[str, int] = {}
        self._stopping = False

    @property
    def open_legs(self) -> int:
        return len(self._legs)

    @property
    def backlog(self) -> int:
        """Packets waiting in leg queues."""
        return sum(s.queue.qsize() for s in self._legs.values())

    def submit(self, topic: str, payload: bytes, arrival_s: float | None = None) -> bool:
        """Queue one MQTT message (one RTP packet). Never blocks; False if dropped (counted)."""
        arrival = self.clock() if arrival_s is None else arrival_s
        self.counters.packets_received += 1
        try:
            _, conversation, leg = parse_audio_topic(topic)
        except ValueError:
            self.counters.bad_topics += 1
            return False
        key = (conversation, leg)
        state = self._legs.get(key)
        if state is None:
            if self._stopping or len(self._legs) >= self.config.max_legs:
                self.counters.legs_refused += 1
                return False
            state = self._open_leg(conversation, leg, topic, arrival)
        state.last_arrival_s = arrival
        try:
            state.queue.put_nowait((payload, arrival))
        except asyncio.QueueFull:
            self.counters.packets_overload += 1
            return False
        return True

    async def conversation_closed(self) -> tuple[str, int]:
        """Wait for the next conversation to close: (conversation, segments published)."""
        return await self._closed_conversations.get()

    async def close(self) -> None:
        """Close every leg (finishing speech in progress), then the thread pool."""
        self._stopping = True
        for state in list(self._legs.values()):
            state.last_arrival_s = float("-inf")  # idle now
        tasks = [s.task for s in self._legs.values() if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    # -- legs --------------------------------------------------------------------------

    def _open_leg(self, conversation: str, leg: str, topic: str, arrival_s: float) -> _Leg:
        conv = self._conversations.get(conversation)
        if conv is None:
            diarizer = Diarizer(self.encoder, self.pipeline.diarizer)
            conv = _Conversation(ConversationTracker(conversation, diarizer, self.pipeline, clock=self.clock))
            self._conversations[conversation] = conv
            self.counters.conversations_opened += 1
        conv.legs.add(leg)
        state = _Leg(conversation, leg, topic, asyncio.Queue(self.config.leg_queue_packets), arrival_s)
        self._legs[(conversation, leg)] = state
        self.counters.legs_opened += 1
        state.task = asyncio.get_running_loop().create_task(self._run_leg(state), name=f"speech-{conversation}-{leg}")
        return state

    async def _run_leg(self, state: _Leg) -> None:
        loop = asyncio.get_running_loop()
        conv = self._conversations[state.conversation]
        cfg = self.config
        try:
            while True:
                try:
                    first = await asyncio.wait_for(state.queue.get(), timeout=cfg.tick_s)
                except TimeoutError:
                    first = None
                if first is None:
                    now = self.clock()
                    if now - state.last_arrival_s >= cfg.idle_close_s or self._stopping and state.queue.empty():
                        break
                    if state.stream is not None:
                        await self._step(loop, state, lambda s, now=now: s.flush(now))
                    continue
                batch = [first]
                while len(batch) < cfg.batch_max_packets and not state.queue.empty():
                    batch.append(state.queue.get_nowait())
                await self._step(loop, state, lambda s, b=batch: s.push(b, self.clock()))
        finally:
            now = self.clock()
            if state.stream is not None:
                await self._step(loop, state, lambda s: s.close(now))
            self._legs.pop((state.conversation, state.leg), None)
            self.counters.legs_closed += 1
            conv.legs.discard(state.leg)
            if not conv.legs and self._conversations.get(state.conversation) is conv:
                del self._conversations[state.conversation]
                await self._emit(StepOutput(segments=conv.tracker.flush(now)), state)
                self.counters.conversations_closed += 1
                n = self.segments_by_conversation.pop(state.conversation, 0)
                self._closed_conversations.put_nowait((state.conversation, n))

    async def _step(self, loop: asyncio.AbstractEventLoop, state: _Leg,
                    work: Callable[[LegStream], StepOutput]) -> None:
        def run() -> StepOutput:
            if state.stream is None:  # built here: decoder set-up is not event-loop work
                tracker = self._conversations[state.conversation].tracker
                state.stream = LegStream(state.conversation, state.leg, self.vad, self._asr(), tracker, self.pipeline)
            out = work(state.stream)
            if self.on_utterance is not None:
                for utterance in out.utterances:
                    try:
                        self.on_utterance(state.topic, utterance)
                    except Exception:  # noqa: BLE001 - mining must not cost the transcript
                        self.counters.worker_errors += 1
                        log.exception("utterance hook failed on %s", state.topic)
            return out

        try:
            out = await loop.run_in_executor(self._pool, run)
        except Exception:  # noqa: BLE001 - one bad step must not kill the leg
            self.counters.worker_errors += 1
            log.exception("speech step failed on %s/%s", state.conversation, state.leg)
            return
        await self._emit(out, state)

    async def _emit(self, out: StepOutput, state: _Leg) -> None:
        c = self.counters
        for err, _ in out.rejected:
            c.packets_rejected[err.reason] = c.packets_rejected.get(err.reason, 0) + 1
        if out.segments:
            self.segments_by_conversation[state.conversation] = (
                self.segments_by_conversation.get(state.conversation, 0) + len(out.segments))
        if out.partials or out.segments or out.rejected:
            await self.sink(out, state.topic)
        now = self.clock()
        partial_s = [max(0.0, now - a) for a in out.partial_arrivals_s]
        final_s = [s.latency_ms / 1000.0 for s in out.segments]
        c.partial_latency_s.extend(partial_s)
        c.final_latency_s.extend(final_s)
        c.partial_latency_hist.observe_many(partial_s)
        c.final_latency_hist.observe_many(final_s)


# ------------------------------------------------------------------------------ MQTT service

def default_asr(config: SpeechServiceConfig, cache_dir: Path) -> EdgeAsr:
    """The Whisper models the config names (loaded once, shared by every leg), with the
    corpus's sentences as the starting vocabulary prompt when a corpus is given."""
    vocab = AsrVocabulary()
    if config.corpus_path is not None:
        sentences = config.corpus_path.read_text(encoding="utf-8").splitlines()
        vocab = AsrVocabulary(version=f"corpus-{config.corpus_path.stem}", prompt=prompt_from_sentences(sentences, keep="first"))
    return load_edge_asr(cache_dir, config.asr_final_model, config.asr_partial_model, device=config.asr_device,
                         cpu_threads=config.asr_threads, max_batch=config.asr_max_batch, vocabulary=vocab)


class SpeechService:
    """The engine behind MQTT. ``await start()``, later ``await stop()``; ``ready`` is set once subscribed."""

    def __init__(self, settings: Settings, *, config: SpeechServiceConfig | None = None,
                 asr: EdgeAsr | AsrSource | None = None, vad: SileroVad | None = None,
                 encoder: SpeakerEncoder | None = None, pipeline: PipelineConfig | None = None,
                 registry: object | None = None, on_utterance: UtteranceHook | None = None) -> None:
        self.settings = settings
        self.config = config or settings.speech
        self.counters = SpeechCounters()
        if registry is not None:
            register_metrics(self.counters, registry)
        self._asr = asr
        self._vad = vad
        self._encoder = encoder
        self._pipeline = pipeline
        self._on_utterance = on_utterance
        self.engine: SpeechEngine | None = None
        self.ready = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.published = SegmentIndex()  # what DC revisions refer to
        self._owned_asr: EdgeAsr | None = None

    async def start(self) -> None:
        """Load models (in a thread) and start consuming."""
        def load() -> tuple[SileroVad, SpeakerEncoder, EdgeAsr | AsrSource]:
            return (self._vad or SileroVad(), self._encoder or SpeakerEncoder(self.config.device),
                    self._asr if self._asr is not None else default_asr(self.config, self.settings.cache_dir))

        vad, encoder, asr = await asyncio.to_thread(load)
        self._owned_asr = asr if self._asr is None and isinstance(asr, EdgeAsr) else None
        self.engine = SpeechEngine(vad=vad, encoder=encoder, asr=asr, sink=self._publish, config=self.config,
                                   pipeline=self._pipeline, counters=self.counters,
                                   on_utterance=self._on_utterance)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="speech-mqtt")

    async def stop(self) -> None:
        """Stop consuming, finish every leg, publish what is left, disconnect."""
        self._stop.set()
        if self.engine is not None:
            await self.engine.close()
        if self._owned_asr is not None:  # the Whisper batching threads this service started
            self._owned_asr.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _make_client(self) -> aiomqtt.Client:
        m = self.settings.mqtt
        return aiomqtt.Client(
            **aiomqtt_connection(m), identifier=f"{m.client_id}{self.config.client_suffix}",
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, keepalive=m.keepalive_s,
            max_queued_incoming_messages=max(1000, m.receive_maximum * 16),
        )

    async def _run(self) -> None:
        backoff = 0.2
        assert self.engine is not None
        while not self._stop.is_set():
            try:
                async with self._make_client() as client:
                    self._client = client
                    await client.subscribe(names.AUDIO_FILTER, qos=self.config.subscribe_qos)
                    self.ready.set()
                    backoff = 0.2
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, (bytes, bytearray)):
                            payload = b"" if payload is None else str(payload).encode()
                        self.engine.submit(message.topic.value, bytes(payload))
            except aiomqtt.MqttError as exc:
                self._client = None
                self.ready.clear()
                if self._stop.is_set():
                    break
                self.counters.reconnects += 1
                log.warning("speech MQTT connection lost (%s); retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)  # backoff, cut short by stop
                backoff = min(backoff * 2, self.config.reconnect_max_s)

    async def _publish(self, out: StepOutput, topic: str) -> None:
        client = self._client
        c = self.counters
        if client is None:
            c.publish_errors += len(out.partials) + len(out.segments) + len(out.rejected)
            return
        try:
            for p in out.partials:
                await client.publish(names.partial_transcript(p.conversation), encode_partial(p),
                                     qos=self.config.partial_qos)
                c.partials_published += 1
            for s in out.segments:
                await client.publish(names.transcript(s.conversation), encode_segment(s), qos=self.config.segment_qos)
                self.published.record(s)
                c.segments_published += 1
            for err, payload in out.rejected:
                dl = DeadLetter(stage="audio", reason=err.reason, detail=err.detail, topic=topic, payload=payload,
                                payload_size=len(payload), node=self.settings.edge.node_name,
                                received_at_ms=int(time.time() * 1000))
                await client.publish(names.dead_letter("audio"), encode_dead_letter(dl), qos=1)
                c.dead_letters_published += 1
        except aiomqtt.MqttError:
            c.publish_errors += 1

    async def publish_revision(self, rev: SpeechRevision) -> bool:
        """Publish a DC revision of a segment this edge published, on the same transcript topic."""
        client = self._client
        if client is None:
            self.counters.publish_errors += 1
            return False
        seg = self.published.apply(rev)
        if seg is None:
            self.counters.revisions_unknown += 1
            return False
        try:
            await client.publish(names.transcript(seg.conversation), encode_segment(seg), qos=self.config.segment_qos)
        except aiomqtt.MqttError:
            self.counters.publish_errors += 1
            return False
        self.counters.revisions_published += 1
        return True


async def run_speech_service(settings: Settings, stop: asyncio.Event, **kwargs: object) -> SpeechCounters:
    """Run :class:`SpeechService` until ``stop`` is set; return its counters."""
    service = SpeechService(settings, **kwargs)  # type: ignore[arg-type]
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
    return service.counters

