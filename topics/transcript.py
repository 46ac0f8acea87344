"""Speech results: live partial hypotheses and final, speaker-labelled transcript segments.

Both are published per conversation (:func:`topics.names.partial_transcript`,
:func:`topics.names.transcript`). Times (``start_s``, ``end_s``, word times) are seconds on
the conversation's clock: zero is the first sample of the conversation's first leg, and all
legs are placed on it by their RTP clocks. ``seq`` orders final segments of a conversation
by ``start_s`` as the edge released them; partials carry their leg's utterance number, and
a newer ``seq`` of the same (leg, utterance) replaces an older one.

Revisions (segment v2): a segment is identified by (conversation, leg, utterance). The edge
publishes it first with ``revision`` 0 and ``source`` ``"edge"``; when the DC re-decodes a
low-confidence utterance (:class:`SpeechRevision`, over Kafka), the edge publishes the same
segment again on the same topic with ``revision`` 1, ``source`` ``"dc"`` and the DC's model
name and version. A higher revision of a segment replaces a lower one. Version 1 segments
decode as revision 0 from the edge.

Cases (segment v3, partial v2): ``case_id`` names the case (warrant) the conversation belongs to, set
by the field unit's configuration (the audio's MQTT v5 user property :data:`topics.names.CASE_PROPERTY`);
None: no case. ``device`` names the field unit whose audio it is. Older versions decode with both None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from topics.codec import ContractError, field, opt_case, pack, unpack
from topics.names import check_id
from topics.vision import ModelRef

__all__ = [
    "PARTIAL_VERSION",
    "SEGMENT_VERSION",
    "MAX_TEXT_CHARS",
    "MAX_WORDS",
    "ModelRef",
    "TranscriptWord",
    "PartialTranscript",
    "TranscriptSegment",
    "encode_partial",
    "decode_partial",
    "encode_segment",
    "decode_segment",
    "SOURCES",
    "REVISION_VERSION",
    "SpeechRevision",
    "encode_revision",
    "decode_revision",
]

PARTIAL_VERSION = 2
SEGMENT_VERSION = 3
REVISION_VERSION = 1
SOURCES = ("edge", "dc", "operator")
MAX_TEXT_CHARS = 8192
MAX_WORDS = 2048
_MAX_SPEAKER = 64
_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TranscriptWord:
    """One word: seconds on the conversation clock, posterior probability in [0, 1]."""

    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True, slots=True)
class PartialTranscript:
    """The current hypothesis of an utterance still being spoken.

    ``speaker`` is the leg's last known speaker label; ``provisional`` says it is a guess
    (the utterance has not been embedded yet, or the leg has no speaker yet: ``"?"``)."""

    conversation: str
    leg: str
    utterance: int
    seq: int
    speaker: str
    provisional: bool
    text: str
    start_s: float
    updated_at_ms: int
    case_id: str | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """One finished utterance of one speaker. ``latency_ms``: its last speech sample
    arriving at the edge -> this segment released for publishing."""

    conversation: str
    leg: str
    utterance: int
    seq: int
    speaker: str
    start_s: float
    end_s: float
    text: str
    confidence: float
    words: tuple[TranscriptWord, ...]
    model: ModelRef
    latency_ms: float
    revision: int = 0
    source: str = "edge"
    utterance_start_s: float = 0.0  # the utterance's first sample (conversation clock)
    case_id: str | None = None  # the case (warrant) of the conversation
    device: str | None = None  # the field unit that sent the audio


@dataclass(frozen=True, slots=True)
class SpeechRevision:
    """The DC's re-decoding of one utterance the edge mined (DC -> edge, Kafka).

    ``key``: the hard example's key; ``node``: the edge that sent it; (``conversation``,
    ``leg``, ``utterance``) name the segment; word times are seconds from the utterance's
    first sample; ``model``: the DC model whose hypothesis won."""

    key: str
    node: str
    conversation: str
    leg: str
    utterance: int
    revision: int
    text: str
    words: tuple[TranscriptWord, ...]
    confidence: float
    model: ModelRef
    source: str
    created_at_ms: int


def _check_ids(conversation: str, leg: str) -> None:
    try:
        check_id(conversation, "conversation")
        check_id(leg, "leg")
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None


def _finite(obj: dict[str, Any], key: str) -> float:
    value = float(field(obj, key, (int, float)))
    if not math.isfinite(value):
        raise ContractError("bad_field", f"{key}: {value} is not finite")
    return value


def _speaker(obj: dict[str, Any]) -> str:
    speaker = field(obj, "speaker", str)
    if not speaker or len(speaker) > _MAX_SPEAKER:
        raise ContractError("bad_field", f"speaker {speaker!r}: 1..{_MAX_SPEAKER} characters")
    return speaker


def _text(obj: dict[str, Any]) -> str:
    text = field(obj, "text", str)
    if len(text) > MAX_TEXT_CHARS:
        raise ContractError("bad_field", f"text of {len(text)} chars > {MAX_TEXT_CHARS}")
    return text


def _nonneg_int(obj: dict[str, Any], key: str) -> int:
    value = field(obj, key, int)
    if value < 0:
        raise ContractError("bad_field", f"{key} {value} < 0")
    return value


def _prob(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ContractError("bad_field", f"{what} {value} not in [0, 1]")
    return value


# ---------------------------------------------------------------------------- partial

def encode_partial(p: PartialTranscript) -> bytes:
    _check_ids(p.conversation, p.leg)
    return pack("partial_transcript", PARTIAL_VERSION, {
        "conversation": p.conversation,
        "leg": p.leg,
        "utterance": p.utterance,
        "seq": p.seq,
        "speaker": p.speaker,
        "provisional": p.provisional,
        "text": p.text,
        "start_s": round(p.start_s, 3),
        "updated_at_ms": p.updated_at_ms,
        "case_id": _case(p.case_id),
        "device": _device(p.device),
    })


def decode_partial(payload: bytes, max_bytes: int = _MAX_BYTES) -> PartialTranscript:
    obj = unpack(payload, "partial_transcript", frozenset({1, PARTIAL_VERSION}), max_bytes)
    conversation = field(obj, "conversation", str)
    leg = field(obj, "leg", str)
    _check_ids(conversation, leg)
    return PartialTranscript(
        conversation=conversation,
        leg=leg,
        utterance=_nonneg_int(obj, "utterance"),
        seq=_nonneg_int(obj, "seq"),
        speaker=_speaker(obj),
        provisional=field(obj, "provisional", bool),
        text=_text(obj),
        start_s=_finite(obj, "start_s"),
        updated_at_ms=_nonneg_int(obj, "updated_at_ms"),
        case_id=opt_case(obj),
        device=opt_case(obj, "device"),
    )


# ---------------------------------------------------------------------------- segment

def encode_segment(s: TranscriptSegment) -> bytes:
    _check_ids(s.conversation, s.leg)
    if len(s.words) > MAX_WORDS:
        raise ValueError(f"{len(s.words)} words > {MAX_WORDS}")
    return pack("transcript_segment", SEGMENT_VERSION, {
        "conversation": s.conversation,
        "leg": s.leg,
        "utterance": s.utterance,
        "seq": s.seq,
        "speaker": s.speaker,
        "start_s": round(s.start_s, 3),
        "end_s": round(s.end_s, 3),
        "text": s.text,
        "confidence": round(s.confidence, 4),
        "words": [[w.word, round(w.start_s, 3), round(w.end_s, 3), round(w.confidence, 4)] for w in s.words],
        "model": {"name": s.model.name, "version": s.model.version},
        "latency_ms": round(s.latency_ms, 2),
        "revision": s.revision,
        "source": s.source,
        "utterance_start_s": round(s.utterance_start_s, 3),
        "case_id": _case(s.case_id),
        "device": _device(s.device),
    })


def _word_from_wire(obj: Any) -> TranscriptWord:
    if not isinstance(obj, list) or len(obj) != 4:
        raise ContractError("bad_field", f"word {obj!r} is not [word, start_s, end_s, confidence]")
    word, start, end, conf = obj
    if not isinstance(word, str) or not word:
        raise ContractError("bad_field", f"word {word!r}")
    nums = (start, end, conf)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in nums):
        raise ContractError("bad_field", f"word times/confidence {nums!r}")
    if end < start:
        raise ContractError("bad_field", f"word {word!r} ends before it starts")
    return TranscriptWord(word=word, start_s=float(start), end_s=float(end),
                          confidence=_prob(float(conf), f"confidence of {word!r}"))


def decode_segment(payload: bytes, max_bytes: int = _MAX_BYTES) -> TranscriptSegment:
    obj = unpack(payload, "transcript_segment", frozenset({1, 2, SEGMENT_VERSION}), max_bytes)
    v2 = obj.get("v", 1) >= 2
    conversation = field(obj, "conversation", str)
    leg = field(obj, "leg", str)
    _check_ids(conversation, leg)
    start = _finite(obj, "start_s")
    end = _finite(obj, "end_s")
    if end < start:
        raise ContractError("bad_field", f"end_s {end} < start_s {start}")
    words = field(obj, "words", list)
    if len(words) > MAX_WORDS:
        raise ContractError("bad_field", f"{len(words)} words > {MAX_WORDS}")
    model = field(obj, "model", dict)
    latency = _finite(obj, "latency_ms")
    if latency < 0:
        raise ContractError("bad_field", f"latency_ms {latency} < 0")
    return TranscriptSegment(
        conversation=conversation,
        leg=leg,
        utterance=_nonneg_int(obj, "utterance"),
        seq=_nonneg_int(obj, "seq"),
        speaker=_speaker(obj),
        start_s=start,
        end_s=end,
        text=_text(obj),
        confidence=_prob(_finite(obj, "confidence"), "confidence"),
        words=tuple(_word_from_wire(w) for w in words),
        model=ModelRef(name=field(model, "name", str), version=field(model, "version", str)),
        latency_ms=latency,
        revision=_nonneg_int(obj, "revision") if v2 else 0,
        source=_source(obj) if v2 else "edge",
        utterance_start_s=_finite(obj, "utterance_start_s") if v2 else start,
        case_id=opt_case(obj),
        device=opt_case(obj, "device"),
    )


def _case(case_id: str | None) -> str | None:
    if case_id is not None:
        check_id(case_id, "case_id")
    return case_id


def _device(device: str | None) -> str | None:
    if device is not None:
        check_id(device, "device")
    return device


def _source(obj: dict[str, Any]) -> str:
    source = field(obj, "source", str)
    if source not in SOURCES:
        raise ContractError("bad_field", f"source {source!r} not in {SOURCES}")
    return source


# ---------------------------------------------------------------------------- revision

def encode_revision(r: SpeechRevision) -> bytes:
    _check_ids(r.conversation, r.leg)
    if r.source not in SOURCES:
        raise ValueError(f"source {r.source!r} not in {SOURCES}")
    return pack("speech_revision", REVISION_VERSION, {
        "key": r.key,
        "node": r.node,
        "conversation": r.conversation,
        "leg": r.leg,
        "utterance": r.utterance,
        "revision": r.revision,
        "text": r.text,
        "words": [[w.word, round(w.start_s, 3), round(w.end_s, 3), round(w.confidence, 4)] for w in r.words],
        "confidence": round(r.confidence, 4),
        "model": {"name": r.model.name, "version": r.model.version},
        "source": r.source,
        "created_at_ms": r.created_at_ms,
    })


def decode_revision(payload: bytes, max_bytes: int = _MAX_BYTES) -> SpeechRevision:
    obj = unpack(payload, "speech_revision", frozenset({REVISION_VERSION}), max_bytes)
    conversation = field(obj, "conversation", str)
    leg = field(obj, "leg", str)
    _check_ids(conversation, leg)
    words = field(obj, "words", list)
    if len(words) > MAX_WORDS:
        raise ContractError("bad_field", f"{len(words)} words > {MAX_WORDS}")
    model = field(obj, "model", dict)
    revision = _nonneg_int(obj, "revision")
    if revision < 1:
        raise ContractError("bad_field", "a revision is numbered from 1")
    return SpeechRevision(
        key=field(obj, "key", str),
        node=field(obj, "node", str),
        conversation=conversation,
        leg=leg,
        utterance=_nonneg_int(obj, "utterance"),
        revision=revision,
        text=_text(obj),
        words=tuple(_word_from_wire(w) for w in words),
        confidence=_prob(_finite(obj, "confidence"), "confidence"),
        model=ModelRef(name=field(model, "name", str), version=field(model, "version", str)),
        source=_source(obj),
        created_at_ms=_nonneg_int(obj, "created_at_ms"),
    )
