"""Speech pipeline, synchronous core: 16 kHz PCM of call legs -> live, speaker-labelled transcript.

- :class:`LegRecognizer`: one leg's VAD -> ASR. Its only state is the VAD's recurrent
  state and the audio of the utterance in progress: the Whisper models are shared by every
  leg (:class:`~models.edge_asr.EdgeAsr`, batched across legs). Emits a :class:`Partial`
  (the fast model on the growing utterance) after every ``partial_every_s`` of speech and
  an :class:`Utterance` (final words, timings, word probabilities, calibrated confidence
  and the utterance's audio) when the VAD closes the speech (or cuts it at
  ``vad.max_speech_s``).
- :class:`ConversationTracker`: one conversation. Puts every leg on the conversation clock
  (``PcmChunk.origin_s + start_s``, zero at the first leg's first sample), labels speakers
  with the conversation's :class:`~edge_agent.speech.diarize.Diarizer`, and releases final
  segments in start-time order: a segment waits until every other open leg has decoded past
  its start (or ``hold_max_s`` has passed).
- :class:`LegStream`: what the service drives per leg: RTP packets -> ``LegDecoder`` (the
  signal side) -> :class:`LegRecognizer` -> tracker -> contract messages (:class:`StepOutput`).

Nothing here blocks on I/O. Times that drive behaviour are passed in (``arrival_s``,
``now_s``: Unix seconds, the clock the service stamps packets with); an injectable ``clock``
is read only to stamp latencies at the moment a result exists. Heavy work (VAD, ASR, embedding)
runs in whatever thread calls. A :class:`LegRecognizer`/:class:`LegStream` must be used by
one thread at a time (the service gives each leg a serial queue); a
:class:`ConversationTracker` and its diarizer may be called from the threads of all its legs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from common.speech_settings import JitterConfig, PipelineConfig
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.governor import LoadGovernor
from edge_agent.speech.stream import LegDecoder, PcmChunk
from models.edge_asr import EdgeAsr
from models.vad import SAMPLE_RATE, WINDOW, SileroVad
from models.whisper_asr import AsrResult, segment_confidence
from topics.clip import AudioClip
from topics.rtp import RtpError
from topics.transcript import ModelRef, PartialTranscript, TranscriptSegment, TranscriptWord

__all__ = [
    "PipelineConfig",
    "Partial",
    "Utterance",
    "LegRecognizer",
    "ConversationTracker",
    "StepOutput",
    "LegStream",
]


@dataclass(frozen=True, slots=True)
class Partial:
    """Current hypothesis of the leg's utterance number ``utterance`` (leg clock)."""

    leg: str
    utterance: int
    text: str
    start_s: float
    speech_s: float
    arrival_s: float  # arrival of the newest audio in this hypothesis


@dataclass(frozen=True, slots=True)
class Utterance:
    """A finished utterance on the leg clock; ``samples`` is its audio, ``start_s`` its first sample.
    ``lead``/``tail``: up to ``example_context_s`` of the leg's audio right before and after it that
    was at hand when it finished (for its hard example)."""

    leg: str
    utterance: int
    start_s: float
    end_s: float
    result: AsrResult
    samples: np.ndarray
    end_arrival_s: float  # arrival of its last speech sample
    model: ModelRef
    lead: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


class LegRecognizer:
    """VAD -> ASR for one leg. Feed it the leg's :class:`PcmChunk` s in order. One thread at a time."""

    def __init__(self, leg: str, vad: SileroVad, asr: EdgeAsr, config: PipelineConfig | None = None,
                 governor: LoadGovernor | None = None) -> None:
        self.leg = leg
        self.config = config or PipelineConfig()
        self._governor = governor  # under load, partials thin out (None: always the configured cadence)
        self._vad = vad.new_stream(self.config.vad)
        self._asr = asr
        self.model_ref = ModelRef(asr.name, asr.version)
        self._chunks: deque[tuple[int, np.ndarray, float]] = deque()  # (first sample, audio, arrival)
        self.received = 0  # next sample index on the leg clock
        self._started = False
        self._utt_start: int | None = None
        self._fed_until = 0
        self._last_partial_at = 0
        self._last_due_at = 0  # where a partial was due at the configured cadence
        self.utterances = 0
        self.dropped_utterances = 0
        self.gaps_filled = 0
        self.discontinuities = 0
        self.last_arrival_s = 0.0
        self._context: tuple[str, int] = ("", 0)  # the leg's last final text and its end sample
        self._held: tuple[int, int] | None = None  # a very short utterance waiting to join the next one

    # -- public ------------------------------------------------------------------------

    @property
    def in_speech(self) -> bool:
        return self._utt_start is not None

    @property
    def safe_until_s(self) -> float:
        """No utterance this leg has yet to finish can start before this time (leg clock)."""
        if self._utt_start is not None:
            return self._utt_start / SAMPLE_RATE
        if self._held is not None:
            return self._held[0] / SAMPLE_RATE
        lookback = int(self.config.vad.pre_pad_s * SAMPLE_RATE) + WINDOW
        return max(0, self._vad.position - lookback) / SAMPLE_RATE

    def push(self, chunk: PcmChunk, arrival_s: float, now_s: float | None = None) -> list[Partial | Utterance]:
        """Consume one chunk; return the partials and finished utterances it produced. ``now_s``:
        when the step handling it began (with a governor, a partial of audio that waited longer
        than its ``stale_partial_s`` is not decoded)."""
        self.last_arrival_s = arrival_s
        pos = int(round(chunk.start_s * SAMPLE_RATE))
        x = np.asarray(chunk.samples, dtype=np.float32)
        out: list[Partial | Utterance] = []
        if not self._started:
            self._started = True
            if pos > 0:
                self._jump(pos)
        tolerance = SAMPLE_RATE // 500  # 2 ms of rounding
        gap = pos - self.received
        if gap > tolerance:
            if gap <= self.config.max_gap_s * SAMPLE_RATE:
                self.gaps_filled += 1
                out += self._ingest(np.zeros(gap, dtype=np.float32), arrival_s, now_s)
            else:
                self.discontinuities += 1
                out += self._finish(self._vad.received, arrival_s, final=True)
                out += self._release_held(arrival_s)
                self._vad.skip(gap)
                self._jump(pos)
        elif gap < -tolerance:
            x = x[-gap:]  # overlap with audio already seen
        if len(x):
            out += self._ingest(x, arrival_s, now_s)
        return out

    def close(self, arrival_s: float | None = None) -> list[Partial | Utterance]:
        """End of the leg: finish the utterance in progress."""
        out: list[Partial | Utterance] = []
        arrival = arrival_s if arrival_s is not None else self.last_arrival_s
        for ev in self._vad.end():
            out += self._finish(ev.sample, arrival, final=True)
        out += self._release_held(arrival)
        return out

    # -- internals -----------------------------------------------------------------------

    def _jump(self, pos: int) -> None:
        self._chunks.clear()
        self.received = pos
        self._vad.position = pos

    def _ingest(self, x: np.ndarray, arrival_s: float, now_s: float | None) -> list[Partial | Utterance]:
        self._chunks.append((self.received, x, arrival_s))
        self.received += len(x)
        out: list[Partial | Utterance] = []
        for ev in self._vad.push(x):
            if ev.kind == "start":
                if self._held is not None and ev.sample - self._held[1] > self.config.merge_gap_s * SAMPLE_RATE:
                    out += self._release_held(arrival_s)
                self._begin(ev.sample)
            else:
                out += self._finish(ev.sample, arrival_s)
        if self._held is not None and self._utt_start is None \
                and self._vad.position - self._held[1] > self.config.merge_gap_s * SAMPLE_RATE:
            out += self._release_held(arrival_s)
        if self._utt_start is not None:
            self._feed(self.received)
            base_s = self.config.partial_every_s
            due = self._fed_until - self._last_due_at >= int(base_s * SAMPLE_RATE)
            every_s = self._governor.partial_every_s(base_s) if self._governor is not None else base_s
            if due:
                self._last_due_at = self._fed_until
            ready = self._fed_until - self._last_partial_at >= every_s * SAMPLE_RATE
            if ready and self._governor is not None and self._asr.finals_pending:
                ready = False  # finals first: this partial waits until no final is queued or decoding
            if ready and self._governor is not None and now_s is not None \
                    and self._governor.partial_is_stale(now_s - arrival_s):
                ready = False  # the leg is behind: catch up rather than show old text
            if not ready:
                if due and self._governor is not None:
                    self._governor.note_thinned()
            else:
                self._last_partial_at = self._fed_until
                text = self._asr.decode_partial(self._slice(self._utt_start, self._fed_until))
                if text:
                    out.append(Partial(self.leg, self.utterances, text, self._utt_start / SAMPLE_RATE,
                                       (self._fed_until - self._utt_start) / SAMPLE_RATE, arrival_s))
        else:
            self._trim()
        return out

    def _slice(self, a: int, b: int) -> np.ndarray:
        parts = []
        for first, x, _ in self._chunks:
            lo, hi = max(a, first), min(b, first + len(x))
            if lo < hi:
                parts.append(x[lo - first:hi - first])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def _arrival_of(self, sample: int) -> float:
        for first, x, arrival in self._chunks:
            if first + len(x) > sample:
                return arrival
        return self.last_arrival_s

    def _trim(self) -> None:
        keep_from = self.received - int((self.config.keep_s + self.config.example_context_s) * SAMPLE_RATE)
        if self._held is not None:
            keep_from = min(keep_from, self._held[0])
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) < keep_from:
            self._chunks.popleft()

    def _begin(self, sample: int) -> None:
        start = max(sample, self._chunks[0][0] if self._chunks else sample)
        joined = self._held is not None and sample - self._held[1] <= self.config.merge_gap_s * SAMPLE_RATE
        if joined and self._held is not None:
            start = self._held[0]  # the short utterance before and this one are decoded as one
        self._held = None
        self._utt_start = start
        self._fed_until = start
        self._last_partial_at = start
        self._last_due_at = start
        if not joined:
            self.utterances += 1

    def _release_held(self, arrival_s: float) -> list[Partial | Utterance]:
        """Decode a held short utterance on its own (no speech followed it in time)."""
        if self._held is None:
            return []
        start, end = self._held
        self._held = None
        self._utt_start = start
        return self._finish(end, arrival_s, final=True)

    def _feed(self, until: int) -> None:
        self._fed_until = max(self._fed_until, until)

    def _finish(self, end: int, arrival_s: float, final: bool = False) -> list[Partial | Utterance]:
        if self._utt_start is None:
            return []
        start = self._utt_start
        if not final and 0 < end - start < self.config.merge_below_s * SAMPLE_RATE:
            self._held = (start, end)  # very short: wait for the next utterance to join it
            self._utt_start = None
            self._feed(end)
            return []
        self._feed(end)
        samples = self._slice(start, end)
        self._utt_start = None
        if (end - start) < self.config.min_utterance_s * SAMPLE_RATE:
            self.dropped_utterances += 1
            self._trim()
            return []
        text, ended = self._context
        context = text if text and start - ended <= self.config.context_s * SAMPLE_RATE else ""
        result = self._asr.decode_final(samples, context) if context else self._asr.decode_final(samples)
        if result.text:
            self._context = (result.text, end)
        pad = int(self.config.vad.speech_pad_s * SAMPLE_RATE)
        end_arrival = self._arrival_of(max(start, end - pad))
        ctx = int(self.config.example_context_s * SAMPLE_RATE)
        lead = self._slice(start - ctx, start)  # what is still buffered before it
        tail = self._slice(end, min(self.received, end + ctx))  # what has arrived after it: never waited for
        self._trim()
        if not result.words or (end - start) < self.config.min_utterance_s * SAMPLE_RATE:
            self.dropped_utterances += 1
            return []
        return [Utterance(self.leg, self.utterances, start / SAMPLE_RATE, end / SAMPLE_RATE, result,
                          samples, end_arrival, self.model_ref, lead, tail)]


# ------------------------------------------------------------------------------ tracker

@dataclass(slots=True)
class _Pending:
    start_s: float
    order: int
    leg: str
    utterance: int
    speaker: str
    end_s: float
    words: tuple[TranscriptWord, ...]
    confidence: float
    end_arrival_s: float
    held_since_s: float
    model: ModelRef
    utterance_start_s: float


@dataclass(slots=True)
class _LegState:
    offset_s: float
    safe_s: float = float("-inf")  # conversation clock
    open: bool = True


class ConversationTracker:
    """Merges the legs of one conversation into one ordered, speaker-labelled transcript."""

    def __init__(self, conversation: str, diarizer: Diarizer, config: PipelineConfig | None = None,
                 keep_segments: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.conversation = conversation
        self.clock = clock
        self.diarizer = diarizer
        self.config = config or PipelineConfig()
        self._lock = threading.Lock()
        self._epoch: float | None = None
        self._legs: dict[str, _LegState] = {}
        self._pending: list[_Pending] = []
        self._order = 0
        self._seq = 0
        self.transcript: deque[TranscriptSegment] = deque(maxlen=keep_segments)
        self.released_late = 0  # released by hold_max_s with a leg still behind

    def open_leg(self, leg: str, origin_s: float) -> None:
        """Register a leg whose first sample is at ``origin_s`` on the shared clock."""
        with self._lock:
            if self._epoch is None:
                self._epoch = origin_s
            state = self._legs.get(leg)
            if state is None or not state.open:
                self._legs[leg] = _LegState(offset_s=origin_s - self._epoch)

    def offset_s(self, leg: str) -> float:
        with self._lock:
            state = self._legs.get(leg)
            return state.offset_s if state else 0.0

    @property
    def open_legs(self) -> list[str]:
        with self._lock:
            return [leg for leg, s in self._legs.items() if s.open]

    def speaker_hint(self, leg: str) -> str:
        """Speaker label for a partial: the leg's last speaker, or ``"?"``."""
        return self.diarizer.leg_speaker(leg) or "?"

    def add_utterance(self, utt: Utterance, now_s: float) -> list[TranscriptSegment]:
        """Label ``utt``'s speaker(s), queue its segment(s), return what can be released now."""
        offset = self.offset_s(utt.leg)
        start = offset + utt.start_s
        turns = self.diarizer.label(utt.leg, utt.samples, start)  # heavy: outside the lock
        words = [TranscriptWord(w.word, start + w.start_s, start + w.end_s, w.confidence)
                 for w in utt.result.words]
        with self._lock:
            state = self._legs.get(utt.leg)
            if state is not None:  # the leg's next utterance cannot start before this one ended
                state.safe_s = max(state.safe_s, offset + utt.end_s)
            for k, turn in enumerate(turns):
                last = k == len(turns) - 1
                mine = tuple(w for w in words
                             if turn.start_s <= (w.start_s + w.end_s) / 2 < turn.end_s
                             or (last and (w.start_s + w.end_s) / 2 >= turn.end_s)
                             or (k == 0 and (w.start_s + w.end_s) / 2 < turn.start_s))
                if not mine:
                    continue
                self._pending.append(_Pending(
                    start_s=mine[0].start_s, order=self._order, leg=utt.leg, utterance=utt.utterance,
                    speaker=turn.speaker, end_s=mine[-1].end_s, words=mine,
                    confidence=segment_confidence([w.confidence for w in mine], utt.result.avg_logprob,
                                                  utt.result.no_speech_prob),
                    end_arrival_s=utt.end_arrival_s, held_since_s=now_s, model=utt.model,
                    utterance_start_s=start))
                self._order += 1
            self._pending.sort(key=lambda p: (p.start_s, p.order))
            return self._release(now_s)

    def progress(self, leg: str, safe_until_leg_s: float, now_s: float) -> list[TranscriptSegment]:
        """``leg`` will start no new utterance before ``safe_until_leg_s`` (leg clock)."""
        with self._lock:
            state = self._legs.get(leg)
            if state is not None:
                state.safe_s = max(state.safe_s, state.offset_s + safe_until_leg_s)
            return self._release(now_s)

    def close_leg(self, leg: str, now_s: float) -> list[TranscriptSegment]:
        """The leg ended: it holds nothing back any more."""
        with self._lock:
            state = self._legs.get(leg)
            if state is not None:
                state.open = False
            return self._release(now_s)

    def flush(self, now_s: float) -> list[TranscriptSegment]:
        """Release everything pending (conversation over)."""
        with self._lock:
            return self._release(now_s, everything=True)

    def _release(self, now_s: float, everything: bool = False) -> list[TranscriptSegment]:
        out: list[TranscriptSegment] = []
        while self._pending:
            p = self._pending[0]
            behind = [leg for leg, s in self._legs.items() if s.open and leg != p.leg and s.safe_s < p.start_s]
            timed_out = now_s - p.held_since_s >= self.config.hold_max_s
            if behind and not (everything or timed_out):
                break
            if behind:
                self.released_late += 1
            self._pending.pop(0)
            seg = TranscriptSegment(
                conversation=self.conversation, leg=p.leg, utterance=p.utterance, seq=self._seq,
                speaker=p.speaker, start_s=p.start_s, end_s=p.end_s,
                text=" ".join(w.word for w in p.words), confidence=p.confidence, words=p.words,
                model=p.model, latency_ms=max(0.0, (self.clock() - p.end_arrival_s) * 1000.0),
                utterance_start_s=p.utterance_start_s)
            self._seq += 1
            self.transcript.append(seg)
            out.append(seg)
        return out


# ------------------------------------------------------------------------------ leg stream

@dataclass
class StepOutput:
    """Messages one step produced, ready to publish, and the packets it rejected.

    ``partial_arrivals_s[i]``: arrival of the newest audio in ``partials[i]`` (for latency);
    ``rejected``: each rejection with the payload whose push surfaced it; ``utterances``: the
    finished utterances with their audio (for hard-example mining)."""

    partials: list[PartialTranscript] = field(default_factory=list)
    partial_arrivals_s: list[float] = field(default_factory=list)
    segments: list[TranscriptSegment] = field(default_factory=list)
    rejected: list[tuple[RtpError, bytes]] = field(default_factory=list)
    utterances: list[Utterance] = field(default_factory=list)
    clips: list[AudioClip] = field(default_factory=list)  # set by the engine when clips are published

    def extend(self, other: StepOutput) -> None:
        self.partials += other.partials
        self.partial_arrivals_s += other.partial_arrivals_s
        self.segments += other.segments
        self.rejected += other.rejected
        self.utterances += other.utterances
        self.clips += other.clips


class LegStream:
    """One leg end to end: RTP bytes -> PCM -> VAD/ASR -> tracker. One thread at a time."""

    def __init__(self, conversation: str, leg: str, vad: SileroVad, asr: EdgeAsr, tracker: ConversationTracker,
                 config: PipelineConfig | None = None, *, jitter: JitterConfig | None = None,
                 governor: LoadGovernor | None = None) -> None:
        self.conversation = conversation
        self.leg = leg
        self.tracker = tracker
        self.decoder = LegDecoder(conversation, leg, config=jitter)
        self.recognizer = LegRecognizer(leg, vad, asr, config or tracker.config, governor)
        self._opened = False
        self._partial_seq = 0
        self.closed = False

    def push(self, packets: Iterable[tuple[bytes, float]], now_s: float) -> StepOutput:
        """Feed RTP packets ``(payload, arrival_s)`` in arrival order."""
        out = StepOutput()
        chunks: list[tuple[PcmChunk, float]] = []
        for data, arrival in packets:
            res = self.decoder.push(data, arrival)
            out.rejected += [(err, data) for err in res.rejected]
            chunks += [(c, arrival) for c in res.chunks]
        self._recognize(chunks, now_s, out)
        return out

    def flush(self, now_s: float) -> StepOutput:
        """Release audio the jitter buffer held long enough (call on a timer)."""
        out = StepOutput()
        self._recognize([(c, now_s) for c in self.decoder.flush(now_s)], now_s, out)
        return out

    def close(self, now_s: float) -> StepOutput:
        """End of the leg: drain the jitter buffer, finish speech in progress, stop holding others."""
        out = StepOutput()
        self._recognize([(c, now_s) for c in self.decoder.flush(now_s, final=True)], now_s, out)
        self._handle(self.recognizer.close(), now_s, out)
        out.segments += self.tracker.close_leg(self.leg, now_s)
        self.closed = True
        return out

    def _recognize(self, chunks: list[tuple[PcmChunk, float]], now_s: float, out: StepOutput) -> None:
        for chunk, arrival in chunks:
            if not self._opened:
                self.tracker.open_leg(self.leg, chunk.origin_s)
                self._opened = True
            self._handle(self.recognizer.push(chunk, arrival, now_s), now_s, out)
        if self._opened:
            out.segments += self.tracker.progress(self.leg, self.recognizer.safe_until_s, now_s)

    def _handle(self, events: list[Partial | Utterance], now_s: float, out: StepOutput) -> None:
        for ev in events:
            if isinstance(ev, Partial):
                out.partials.append(PartialTranscript(
                    conversation=self.conversation, leg=self.leg, utterance=ev.utterance,
                    seq=self._partial_seq, speaker=self.tracker.speaker_hint(self.leg), provisional=True,
                    text=ev.text, start_s=self.tracker.offset_s(self.leg) + ev.start_s,
                    updated_at_ms=int(self.tracker.clock() * 1000)))
                out.partial_arrivals_s.append(ev.arrival_s)
                self._partial_seq += 1
            else:
                out.utterances.append(ev)
                out.segments += self.tracker.add_utterance(ev, now_s)
