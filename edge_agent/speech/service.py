"""The speech service: RTP call legs over MQTT -> live partials and final, speaker-labelled segments.

- :class:`SpeechEngine` (no MQTT): one bounded queue and one serial worker per leg. The
  worker hands batches of packets to a thread pool (``LegDecoder`` -> VAD -> ASR ->
  diarization all run there, never on the event loop); one leg never has two batches in
  flight, so its objects are used by one thread at a time. A full leg queue drops the packet
  (counted, the jitter buffer conceals it like network loss). Legs idle for
  ``idle_close_s`` are closed (their speech in progress finished); a conversation ends with
  its last leg.
- Admission is cheap and bounded: a new leg's first packet is parsed before anything is
  opened (a bad one is dead-lettered, no leg); at most :meth:`SpeechServiceConfig.leg_limit`
  legs are open (``max_legs``, lowered by the per-leg memory budget); a leg over the limit is
  refused once, counted in legs (``legs_refused``), its packets counted
  (``packets_of_refused_legs``) until it has been quiet for ``idle_close_s``. A leg's
  pipeline is built by one factory call (:meth:`SpeechEngine._build_stream`) in a worker.
- Idle is measured on network arrival time: the MQTT client stamps each packet when it
  arrives (:class:`edge_agent.mqtt.ArrivalQueue`), so a backlog never looks like silence.
- :class:`SpeechService`: the engine behind an aiomqtt MQTT v5 client. Subscribes to
  :data:`topics.names.AUDIO_FILTER` (QoS 1, not shared: every packet of a leg must reach the
  same agent), publishes partials (QoS 0) on ``partial_transcript(conversation)``, segments
  (QoS 1) on ``transcript(conversation)`` and rejected packets as dead letters (stage
  ``audio``). Reconnects with backoff; legs survive a reconnect.

Times: packets are stamped with ``clock()`` (Unix seconds) when they reach the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiomqtt
import numpy as np

from common import tracing
from common.logs import bind_context
from common.settings import Settings, SpeechServiceConfig
from edge_agent.metrics import BucketCounts
from edge_agent.mqtt import ArrivalQueue, MqttClient, case_property, make_client, publish_confirmed
from edge_agent.mqtt_session import Connection, MqttSession
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.governor import LoadGovernor
from edge_agent.speech.pipeline import ConversationTracker, LegStream, StepOutput, Utterance
from edge_agent.speech.revisions import SegmentIndex
from models.edge_asr import AsrVocabulary, EdgeAsr, load_edge_asr, prompt_from_sentences
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from topics import names
from topics.clip import clip_from_samples, encode_clip
from topics.codec import ContractError, now_ms, payload_bytes
from topics.deadletter import DeadLetter, encode_dead_letter
from topics.rtp import parse_rtp
from topics.transcript import SpeechRevision, encode_partial, encode_segment

__all__ = [
    "segment_traceparent",
    "SpeechServiceConfig",
    "SpeechCounters",
    "SpeechEngine",
    "SpeechService",
    "register_metrics",
    "warm_up",
]

log = logging.getLogger(__name__)

AsrSource = Callable[[], EdgeAsr]
UtteranceHook = Callable[[str, Utterance], None]
"""Called in the worker thread with the leg's topic and each finished utterance (hard-example mining)."""


def segment_traceparent(conversation: str, leg: str, utterance: int) -> str:
    """The trace of one final segment: on its MQTT message (a user property) and, as a Kafka header,
    on its hard example, the DC's revision of it and that revision's MQTT message."""
    return tracing.derived("segment", conversation, leg, utterance)


@dataclass
class SpeechCounters:
    """What the service did, as plain attributes (exported as ``edge_speech_*``)."""

    packets_received: int = 0
    packets_overload: int = 0
    packets_client_queue_full: int = 0
    packets_of_refused_legs: int = 0
    packets_rejected: dict[str, int] = field(default_factory=dict)
    bad_topics: int = 0
    legs_opened: int = 0
    legs_closed: int = 0
    legs_refused: int = 0
    legs_refused_overload: int = 0
    partials_thinned: int = 0  # mirrors the engine's LoadGovernor
    lag_s: float = 0.0  # the governor's smoothed lag
    cpu_use: float = 0.0  # the governor's reading of the process's share of the node's CPUs
    legs_open_peak: int = 0
    conversations_opened: int = 0
    conversations_closed: int = 0
    partials_published: int = 0
    segments_published: int = 0
    clips_published: int = 0
    dead_letters_published: int = 0
    dead_letters_shed: int = 0
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
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> object:
            c = counters
            for name, value, doc in (
                ("packets_received", c.packets_received, "RTP packets received"),
                ("packets_overload", c.packets_overload, "packets dropped: leg queue full"),
                ("packets_client_queue_full", c.packets_client_queue_full,
                 "packets dropped: MQTT client queue full"),
                ("packets_of_refused_legs", c.packets_of_refused_legs, "packets dropped: their leg was refused"),
                ("bad_topics", c.bad_topics, "messages on malformed audio topics"),
                ("legs_opened", c.legs_opened, "call legs opened"),
                ("legs_closed", c.legs_closed, "call legs closed"),
                ("legs_refused", c.legs_refused, "legs refused: leg limit (max_legs, memory budget) reached"),
                ("legs_refused_overload", c.legs_refused_overload,
                 "legs refused: the engine lags (degradation step 3)"),
                ("partials_thinned", c.partials_thinned,
                 "partials not decoded: the engine lags (degradation step 1)"),
                ("conversations_opened", c.conversations_opened, "conversations opened"),
                ("conversations_closed", c.conversations_closed, "conversations closed"),
                ("partials_published", c.partials_published, "partial transcripts published"),
                ("segments_published", c.segments_published, "final segments published"),
                ("clips_published", c.clips_published, "audio clips of final segments published"),
                ("dead_letters_published", c.dead_letters_published, "rejected packets dead-lettered"),
                ("dead_letters_shed", c.dead_letters_shed, "rejections counted but not dead-lettered: "
                 "too many dead letters in flight"),
                ("publish_errors", c.publish_errors, "partials, segments and dead letters not published"),
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
            yield GaugeMetricFamily("edge_speech_legs_open_peak", "most legs open at once", value=c.legs_open_peak)
            yield GaugeMetricFamily("edge_speech_lag_seconds", "smoothed wait of packets before their worker step",
                                    value=c.lag_s)
            yield GaugeMetricFamily("edge_speech_cpu_use_ratio", "the process's share of the node's CPUs (drives "
                                    "partial thinning above speech.degradation.cpu_target)", value=c.cpu_use)
            yield c.partial_latency_hist.family("edge_speech_partial_latency_seconds",
                                                "audio arrival -> partial published")
            yield c.final_latency_hist.family("edge_speech_final_latency_seconds",
                                              "end of speech arrival -> segment published")

    registry.register(_Collector())  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ engine

Sink = Callable[[StepOutput, str], Awaitable[None]]  # (output, audio topic it came from)


@dataclass
class _Conversation:
    tracker: ConversationTracker
    legs: set[str] = field(default_factory=set)
    case_id: str | None = None  # the case (warrant) its first leg's packets named


@dataclass
class _Leg:
    conversation: str
    leg: str
    topic: str
    queue: asyncio.Queue[tuple[bytes, float]]
    last_arrival_s: float
    stream: LegStream | None = None
    task: asyncio.Task[None] | None = None
    case_id: str | None = None


class SpeechEngine:
    """Per-leg serial workers over a shared thread pool; results go to ``sink``."""

    def __init__(self, *, vad: SileroVad, encoder: SpeakerEncoder, asr: EdgeAsr | AsrSource, sink: Sink,
                 config: SpeechServiceConfig | None = None,
                 counters: SpeechCounters | None = None, clock: Callable[[], float] = time.time,
                 on_utterance: UtteranceHook | None = None) -> None:
        self.config = config or SpeechServiceConfig()
        self.pipeline = self.config.pipeline
        self.vad = vad
        self.encoder = encoder
        self._asr: AsrSource = asr if callable(asr) else (lambda: asr)
        self.sink = sink
        self.counters = counters or SpeechCounters()
        self.clock = clock
        self.on_utterance = on_utterance
        self._pool = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="speech")
        self.governor = LoadGovernor(self.config.degradation)
        self._legs: dict[tuple[str, str], _Leg] = {}
        self._by_topic: dict[str, _Leg] = {}
        self._refused: dict[tuple[str, str], float] = {}  # refused leg -> its last arrival
        self._dead_letter_tasks: set[asyncio.Future[None]] = set()
        self._conversations: dict[str, _Conversation] = {}
        self._closed_conversations: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.segments_by_conversation: dict[str, int] = {}
        self._stopping = False
        self._last_progress_s = time.monotonic()

    def live(self, stall_s: float) -> bool:
        """False when packets wait and no worker step finished for ``stall_s`` (a wedged worker)."""
        now = time.monotonic()
        if self.backlog == 0:  # nothing waits: a quiet spell is not a stall
            self._last_progress_s = now
            return True
        return now - self._last_progress_s <= stall_s

    @property
    def open_legs(self) -> int:
        return len(self._legs)

    @property
    def backlog(self) -> int:
        """Packets waiting in leg queues."""
        return sum(s.queue.qsize() for s in self._legs.values())

    def last_arrival_s(self, conversation: str, leg: str) -> float | None:
        """Arrival of the newest packet of an open leg (what idling is measured from); None if not open."""
        state = self._legs.get((conversation, leg))
        return None if state is None else state.last_arrival_s

    def note_arrival(self, topic: str, arrival_s: float) -> None:
        """A packet for ``topic`` reached the MQTT client (it may wait there): the leg is not idle."""
        state = self._by_topic.get(topic)
        if state is not None and arrival_s > state.last_arrival_s:
            state.last_arrival_s = arrival_s

    def submit(self, topic: str, payload: bytes, arrival_s: float | None = None,
               case_id: str | None = None) -> bool:
        """Queue one MQTT message (one RTP packet). Never blocks; False if dropped (counted).
        ``case_id``: the case its publisher named (:data:`topics.names.CASE_PROPERTY`); the first
        leg of a conversation that names one sets it for the whole conversation.

        A packet of a leg not open yet must parse as RTP before the leg is opened; a rejected
        one is counted and dead-lettered, and no leg is opened for it."""
        arrival = self.clock() if arrival_s is None else arrival_s
        c = self.counters
        c.packets_received += 1
        try:
            _, conversation, leg = names.parse_audio(topic)
        except ContractError as exc:
            c.bad_topics += 1
            self.reject(topic, payload, exc)
            return False
        key = (conversation, leg)
        state = self._legs.get(key)
        if state is None:
            refused_at = self._refused.get(key)
            if refused_at is not None and arrival - refused_at < self.config.idle_close_s:
                self._refused[key] = arrival
                c.packets_of_refused_legs += 1
                return False
            try:
                parse_rtp(payload)  # validate before open: a bad packet costs no leg
                if case_id is not None:
                    try:
                        names.check_id(case_id, "case_id")
                    except ValueError as bad:
                        raise ContractError("bad_case_id", str(bad)) from None
            except ContractError as exc:
                self.reject(topic, payload, exc)
                return False
            if self._stopping or len(self._legs) >= self.config.leg_limit:
                self._refuse(key, topic, payload, arrival)
                return False
            if not self.governor.admits_new_leg():
                c.legs_refused_overload += 1
                self._refuse(key, topic, payload, arrival, ContractError(
                    "overloaded", f"speech lags {self.governor.lag_s:.2f} s behind its audio; open legs come first"))
                return False
            self._refused.pop(key, None)
            state = self._open_leg(conversation, leg, topic, arrival, case_id)
        if arrival > state.last_arrival_s:
            state.last_arrival_s = arrival
        try:
            state.queue.put_nowait((payload, arrival))
        except asyncio.QueueFull:
            self.counters.packets_overload += 1
            return False
        return True

    def _refuse(self, key: tuple[str, str], topic: str, payload: bytes, arrival_s: float,
                reason: ContractError | None = None) -> None:
        """Refuse a leg (over the limit, or ``reason``): counted once per leg, dead-lettered once, its
        packets counted."""
        c = self.counters
        if reason is None:
            c.legs_refused += 1
        c.packets_of_refused_legs += 1
        self._refused[key] = arrival_s
        if len(self._refused) > 4 * self.config.leg_limit + 1024:  # bounded: forget the quietest
            quiet = [k for k, t in self._refused.items() if arrival_s - t >= self.config.idle_close_s]
            for k in quiet or list(self._refused)[: len(self._refused) // 2]:
                del self._refused[k]
        limit = self.config.leg_limit
        error = reason or ContractError("leg_limit", f"{len(self._legs)} legs open, limit {limit}")
        self.reject(topic, payload, error, count=False)

    def reject(self, topic: str, payload: bytes, error: ContractError, *, count: bool = True) -> None:
        """Count a rejected packet under its reason and dead-letter it (in the background, bounded)."""
        c = self.counters
        if count:
            c.packets_rejected[error.reason] = c.packets_rejected.get(error.reason, 0) + 1
        if len(self._dead_letter_tasks) >= self.config.leg_limit * 4 + 64:
            c.dead_letters_shed += 1
            return
        out = StepOutput(rejected=[(error, payload)])  # type: ignore[list-item]
        task: asyncio.Future[None] = asyncio.ensure_future(self.sink(out, topic))
        self._dead_letter_tasks.add(task)
        task.add_done_callback(self._dead_letter_tasks.discard)

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

    def _open_leg(self, conversation: str, leg: str, topic: str, arrival_s: float,
                  case_id: str | None = None) -> _Leg:
        conv = self._conversations.get(conversation)
        if conv is None:
            diarizer = Diarizer(self.encoder, self.pipeline.diarizer)
            conv = _Conversation(ConversationTracker(conversation, diarizer, self.pipeline, clock=self.clock))
            self._conversations[conversation] = conv
            self.counters.conversations_opened += 1
        conv.legs.add(leg)
        if conv.case_id is None:
            conv.case_id = case_id
        state = _Leg(conversation, leg, topic, asyncio.Queue(self.config.leg_queue_packets), arrival_s,
                     case_id=conv.case_id)
        self._legs[(conversation, leg)] = state
        self._by_topic[topic] = state
        self.counters.legs_opened += 1
        self.counters.legs_open_peak = max(self.counters.legs_open_peak, len(self._legs))
        state.task = asyncio.get_running_loop().create_task(self._run_leg(state), name=f"speech-{conversation}-{leg}")
        return state

    async def _run_leg(self, state: _Leg) -> None:
        bind_context(conversation=state.conversation, leg=state.leg)  # this leg's task logs with them
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
                    if now - state.last_arrival_s >= cfg.idle_close_s or (self._stopping and state.queue.empty()):
                        break
                    if state.stream is not None:
                        await self._step(loop, state, functools.partial(LegStream.flush, now_s=now))
                    continue
                batch = [first]
                while len(batch) < cfg.batch_max_packets and not state.queue.empty():
                    batch.append(state.queue.get_nowait())
                await self._step(loop, state, functools.partial(self._push, batch))
        finally:
            now = self.clock()
            if state.stream is not None:
                await self._step(loop, state, lambda s: s.close(now))
            self._legs.pop((state.conversation, state.leg), None)
            if self._by_topic.get(state.topic) is state:
                del self._by_topic[state.topic]
            self.counters.legs_closed += 1
            conv.legs.discard(state.leg)
            if not conv.legs and self._conversations.get(state.conversation) is conv:
                del self._conversations[state.conversation]
                await self._emit(StepOutput(segments=conv.tracker.flush(now)), state)
                self.counters.conversations_closed += 1
                n = self.segments_by_conversation.pop(state.conversation, 0)
                self._closed_conversations.put_nowait((state.conversation, n))

    def _push(self, packets: list[tuple[bytes, float]], stream: LegStream) -> StepOutput:
        now = self.clock()  # read in the worker, as the packets are decoded
        self.governor.observe(now - packets[0][1])
        self.governor.observe_cpu(time.process_time(), time.monotonic())
        out = stream.push(packets, now)
        self.counters.lag_s = self.governor.lag_s
        self.counters.cpu_use = self.governor.cpu_use
        self.counters.partials_thinned = self.governor.partials_thinned
        return out

    async def _step(self, loop: asyncio.AbstractEventLoop, state: _Leg,
                    work: Callable[[LegStream], StepOutput]) -> None:
        def run() -> StepOutput:
            if state.stream is None:  # built here: decoder set-up is not event-loop work
                state.stream = self._build_stream(state)
            out = work(state.stream)
            if self.on_utterance is not None:
                for utterance in out.utterances:
                    try:
                        self.on_utterance(state.topic, utterance)
                    except Exception:
                        self.counters.worker_errors += 1
                        log.exception("utterance hook failed on %s", state.topic)
            return out

        try:
            out = await loop.run_in_executor(self._pool, run)
        except Exception:
            self.counters.worker_errors += 1
            log.exception("speech step failed on %s/%s", state.conversation, state.leg)
            return
        finally:
            self._last_progress_s = time.monotonic()
        await self._emit(out, state)

    def _build_stream(self, state: _Leg) -> LegStream:
        """The one place a leg's pipeline is built (in a worker thread, after its first packet validated)."""
        tracker = self._conversations[state.conversation].tracker
        return LegStream(state.conversation, state.leg, self.vad, self._asr(), tracker, self.pipeline,
                         jitter=self.config.jitter, governor=self.governor)

    async def _emit(self, out: StepOutput, state: _Leg) -> None:
        c = self.counters
        for err, _ in out.rejected:
            c.packets_rejected[err.reason] = c.packets_rejected.get(err.reason, 0) + 1
        if out.partials or out.segments:  # who sent the audio, and the case it belongs to
            device = names.parse_audio(state.topic)[0]
            out.partials = [dataclasses.replace(p, case_id=state.case_id, device=device) for p in out.partials]
            out.segments = [dataclasses.replace(s, case_id=state.case_id, device=device) for s in out.segments]
        if out.utterances and self.config.publish_clips:  # opt-in: the audio, for operators to play
            conv = self._conversations.get(state.conversation)
            offset = conv.tracker.offset_s(state.leg) if conv is not None else 0.0
            device = names.parse_audio(state.topic)[0]
            out.clips = [clip_from_samples(state.conversation, state.leg, u.utterance, offset + u.start_s, u.samples,
                                           case_id=state.case_id, device=device, max_s=self.config.clip_max_s)
                         for u in out.utterances if len(u.samples)]
        if out.segments:
            self.segments_by_conversation[state.conversation] = (
                self.segments_by_conversation.get(state.conversation, 0) + len(out.segments))
        if out.partials or out.segments or out.rejected or out.clips:
            await self.sink(out, state.topic)
        now = self.clock()
        partial_s = [max(0.0, now - a) for a in out.partial_arrivals_s]
        final_s = [s.latency_ms / 1000.0 for s in out.segments]
        c.partial_latency_s.extend(partial_s)
        c.final_latency_s.extend(final_s)
        c.partial_latency_hist.observe_many(partial_s)
        c.final_latency_hist.observe_many(final_s)


# ------------------------------------------------------------------------------ MQTT service

def warm_up(vad: SileroVad, encoder: SpeakerEncoder, asr: EdgeAsr) -> None:
    """Run each model once on noise before traffic (blocking; call from a thread). A cold model
    makes the first utterance pay its set-up: measured 2.2 s on the speaker encoder's first call."""
    vad.warm_up()
    encoder.warm_up()
    asr.warm_up()


def default_asr(config: SpeechServiceConfig, cache_dir: Path) -> EdgeAsr:
    """The Whisper models the config names (loaded once, shared by every leg), with the
    corpus's sentences as the starting vocabulary prompt when a corpus is given."""
    vocab = AsrVocabulary()
    if config.corpus_path is not None:
        sentences = config.corpus_path.read_text(encoding="utf-8").splitlines()
        vocab = AsrVocabulary(version=f"corpus-{config.corpus_path.stem}",
                              prompt=prompt_from_sentences(sentences, keep="first"))
    return load_edge_asr(cache_dir, config.asr_final_model, config.asr_partial_model, device=config.asr_device,
                         cpu_threads=config.asr_threads, max_batch=config.asr_max_batch,
                         parallel=config.asr_parallel, vocabulary=vocab)


class SpeechService:
    """The engine behind MQTT, a :class:`common.component.Component`: ``await run(stop)``;
    ``connected`` is set once subscribed. :meth:`load` loads the models ahead of ``run`` (optional)."""

    name = "speech"

    def __init__(self, settings: Settings, *, config: SpeechServiceConfig | None = None,
                 asr: EdgeAsr | AsrSource | None = None, vad: SileroVad | None = None,
                 encoder: SpeakerEncoder | None = None,
                 registry: object | None = None, on_utterance: UtteranceHook | None = None) -> None:
        self.settings = settings
        self.config = config or settings.speech
        self.counters = SpeechCounters()
        if registry is not None:
            register_metrics(self.counters, registry)
        self._asr = asr
        self._vad = vad
        self._encoder = encoder
        self._on_utterance = on_utterance
        self.engine: SpeechEngine | None = None

        def lost(_: BaseException) -> None:
            self.counters.reconnects += 1

        self.session = MqttSession("speech MQTT session", lambda _on_unacked_drop, _will: self._make_client(),
                                   [(names.AUDIO_FILTER, self.config.subscribe_qos)], manual_ack=False,
                                   reconnect_s=(min(0.2, self.config.reconnect_max_s), self.config.reconnect_max_s),
                                   on_reconnect=lost)
        self.connected = self.session.connected
        self.published = SegmentIndex()  # what DC revisions refer to
        self._owned_asr: EdgeAsr | None = None

    def ready(self) -> bool:
        return self.connected.is_set()

    def live(self) -> bool:
        """False when a leg's worker made no progress for ``delivery.liveness_stall_s`` with packets pending."""
        return self.engine is None or self.engine.live(self.settings.delivery.liveness_stall_s)

    @property
    def stats(self) -> SpeechCounters:
        return self.counters

    async def load(self) -> None:
        """Load the models (in a thread); ``run`` does it if not done."""
        if self.engine is not None:
            return

        def load() -> tuple[SileroVad, SpeakerEncoder, EdgeAsr | AsrSource]:
            vad, encoder = self._vad or SileroVad(), self._encoder or SpeakerEncoder(self.config.device)
            asr = self._asr if self._asr is not None else default_asr(self.config, self.settings.cache_dir)
            warm_up(vad, encoder, asr if isinstance(asr, EdgeAsr) else asr())
            return vad, encoder, asr

        vad, encoder, asr = await asyncio.to_thread(load)
        self._owned_asr = asr if self._asr is None and isinstance(asr, EdgeAsr) else None
        self.engine = SpeechEngine(vad=vad, encoder=encoder, asr=asr, sink=self._publish, config=self.config,
                                   counters=self.counters,
                                   on_utterance=self._on_utterance)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then finish every leg, publish what is left, disconnect."""
        await self.load()
        engine = self.engine
        assert engine is not None
        closed = False

        async def serve(conn: Connection, stop: asyncio.Event) -> None:
            nonlocal closed
            messages = asyncio.create_task(self._consume(conn, engine))
            stopping = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait({messages, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if messages in done:
                    messages.result()  # raises the MqttError that ended the connection
                    return
                closed = True
                await engine.close()  # still consuming and connected: what is left is published
            finally:
                messages.cancel()
                stopping.cancel()

        try:
            await self.session.run(stop, serve)
        finally:
            if not closed:  # stopped while disconnected: finish the legs all the same (publishes counted lost)
                await engine.close()
            self.close()

    async def _consume(self, conn: Connection, engine: SpeechEngine) -> None:
        async for item in conn.client.messages:
            arrival_s, message = cast(tuple[float, aiomqtt.Message], item)  # stamped by ArrivalQueue
            engine.submit(message.topic.value, payload_bytes(message.payload), arrival_s, case_property(message))

    def close(self) -> None:
        """Release the Whisper batching threads this service started (idempotent; ``run`` calls it)."""
        if self._owned_asr is not None:
            self._owned_asr.close()
            self._owned_asr = None

    def _make_client(self) -> MqttClient:
        m = self.settings.mqtt
        engine = self.engine
        assert engine is not None

        def on_drop() -> None:
            self.counters.packets_client_queue_full += 1

        def on_arrival(message: aiomqtt.Message, arrival_s: float) -> None:
            engine.note_arrival(message.topic.value, arrival_s)

        return make_client(m, client_id=f"{m.client_id}{self.config.client_suffix}", persistent=False,
                           manual_ack=False, queue_size=self.config.client_queue_packets,
                           queue_type=functools.partial(ArrivalQueue, on_drop=on_drop, on_arrival=on_arrival,
                                                        clock=engine.clock))

    @property
    def _client(self) -> MqttClient | None:
        conn = self.session.current
        return None if conn is None else conn.client

    async def _publish(self, out: StepOutput, topic: str) -> None:
        client = self._client
        c = self.counters
        if client is None:
            c.publish_errors += len(out.partials) + len(out.segments) + len(out.rejected) + len(out.clips)
            return
        deadline = self.settings.delivery.publish_deadline_s
        done = 0
        try:
            for p in out.partials:
                await client.publish(names.partial_transcript(p.conversation), encode_partial(p),
                                     qos=self.config.partial_qos)
                c.partials_published += 1
            for clip in out.clips:  # before the segments: a console reloading on a segment finds its clip stored
                await publish_confirmed(client, names.audio_clip(clip.conversation), encode_clip(clip),
                                        qos=self.config.segment_qos, deadline_s=deadline)
                c.clips_published += 1
                done += 1
            for s in out.segments:  # waited for through a broker stall, not given up after 10 s
                await publish_confirmed(client, names.transcript(s.conversation), encode_segment(s),
                                        qos=self.config.segment_qos, deadline_s=deadline,
                                        properties=tracing.mqtt_properties(
                                            segment_traceparent(s.conversation, s.leg, s.utterance)))
                self.published.record(s)
                c.segments_published += 1
                done += 1
            for err, payload in out.rejected:
                dl = DeadLetter(stage="audio", reason=err.reason, detail=err.detail, topic=topic, payload=payload,
                                payload_size=len(payload), node=self.settings.edge.node_name,
                                received_at_ms=now_ms())
                await publish_confirmed(client, names.dead_letter("audio"), encode_dead_letter(dl), deadline_s=deadline)
                c.dead_letters_published += 1
                done += 1
        except aiomqtt.MqttError:
            c.publish_errors += (len(out.partials) + len(out.segments) + len(out.rejected) + len(out.clips)
                                 - done)  # each one lost

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
            trace = tracing.current()  # the DC's revision record's trace: back on the MQTT output
            await client.publish(names.transcript(seg.conversation), encode_segment(seg), qos=self.config.segment_qos,
                                 properties=tracing.mqtt_properties(tracing.child(trace) if trace else None))
        except aiomqtt.MqttError:
            self.counters.publish_errors += 1
            return False
        self.counters.revisions_published += 1
        return True

