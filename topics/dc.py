"""DC-loop messages on Kafka: hard examples (edge -> DC), labels (operators -> DC) and
model-update announcements (DC -> edge).

A hard example is identified by :attr:`HardExample.key` (model, device, stream, seq, item):
the outbox deduplicates on it and the trainer's sample store is idempotent on it.

Hard example v2 adds ``lead_s``/``tail_s``: an audio example may carry some of its leg's audio
before and after the utterance (the DC decodes the utterance with it; v1: 0 and 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from math import isfinite
from typing import Any

from topics.codec import ContractError, field, opt_field, pack, unpack
from topics.names import check_id

__all__ = [
    "HARD_EXAMPLE_VERSION",
    "LABEL_VERSION",
    "MODEL_UPDATE_VERSION",
    "MAX_HARD_EXAMPLE_BYTES",
    "MAX_LABEL_BYTES",
    "MAX_MODEL_UPDATE_BYTES",
    "KINDS",
    "INPUT_ENCODINGS",
    "UPDATE_ACTIONS",
    "HardExample",
    "Label",
    "ModelUpdate",
    "example_key",
    "encode_hard_example",
    "decode_hard_example",
    "encode_label",
    "decode_label",
    "encode_model_update",
    "decode_model_update",
]

HARD_EXAMPLE_VERSION = 2  # v2: lead_s, tail_s (v1 still decodes: 0, 0)
_HARD_EXAMPLE_VERSIONS = frozenset({1, 2})
LABEL_VERSION = 1
MODEL_UPDATE_VERSION = 1
MAX_HARD_EXAMPLE_BYTES = 1 << 20
MAX_LABEL_BYTES = 64 * 1024
MAX_MODEL_UPDATE_BYTES = 16 << 20
KINDS = ("face", "audio")
# png: a grayscale face crop; pcm_s16le: mono little-endian 16-bit audio at ``sample_rate``.
INPUT_ENCODINGS = ("png", "pcm_s16le")
UPDATE_ACTIONS = ("promote", "rollback")


def example_key(model: str, device: str, stream: str, seq: int, item: int) -> str:
    """The dedup key of one hard example."""
    return f"{model}|{device}|{stream}|{seq}|{item}"


@dataclass(frozen=True, slots=True)
class HardExample:
    """One low-confidence case: the model input, what the edge made of it, and why it is hard.

    ``seq`` is the source's sequence number (frame seq, speech-segment seq), ``item`` the
    index inside it (face number), ``stream`` a sub-source (``conversation.leg``; ``""`` for
    cameras). ``confidences`` are class probabilities (face) or word confidences (audio).
    ``lead_s``/``tail_s``: seconds of the leg's audio before/after the utterance that ``data``
    (audio) carries as well; :attr:`utterance_data` is the utterance alone.
    """

    device: str
    model: str
    model_version: str
    kind: str
    seq: int
    item: int
    encoding: str
    data: bytes
    result: str
    confidences: tuple[float, ...]
    reasons: tuple[str, ...]
    node: str
    captured_at_ms: int
    stream: str = ""
    sample_rate: int | None = None
    lead_s: float = 0.0
    tail_s: float = 0.0

    @property
    def key(self) -> str:
        return example_key(self.model, self.device, self.stream, self.seq, self.item)

    @property
    def utterance_data(self) -> bytes:
        """``data`` without the lead and tail audio (``data`` itself when there is none)."""
        if self.encoding != "pcm_s16le" or not self.sample_rate or (self.lead_s <= 0 and self.tail_s <= 0):
            return self.data
        lo, hi = _context_bytes(self.lead_s, self.tail_s, self.sample_rate)
        return self.data[lo:len(self.data) - hi]


def _context_bytes(lead_s: float, tail_s: float, sample_rate: int) -> tuple[int, int]:
    """Bytes of s16le PCM that ``lead_s`` and ``tail_s`` take."""
    return 2 * round(lead_s * sample_rate), 2 * round(tail_s * sample_rate)


def _context_error(encoding: str, data: bytes, sample_rate: int | None, lead_s: float, tail_s: float) -> str | None:
    """Why ``lead_s``/``tail_s`` do not fit the example, or None."""
    if not (isfinite(lead_s) and isfinite(tail_s)) or lead_s < 0 or tail_s < 0:
        return f"lead_s {lead_s} / tail_s {tail_s} must be finite and >= 0"
    if lead_s == 0 and tail_s == 0:
        return None
    if encoding != "pcm_s16le" or not sample_rate:
        return "lead_s/tail_s only for pcm_s16le audio"
    lo, hi = _context_bytes(lead_s, tail_s, sample_rate)
    if lo + hi >= len(data):
        return f"lead_s {lead_s} + tail_s {tail_s} leave no utterance in {len(data)} bytes"
    return None


@dataclass(frozen=True, slots=True)
class Label:
    """A ground-truth label for one stored hard example (``key``), e.g. a corrected transcript."""

    key: str
    text: str
    source: str
    labelled_at_ms: int


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """Announcement of the version of ``name`` that edges must serve.

    The artifact comes inline (``artifact``) or by ``url``. ``signature`` is an ed25519
    signature of :func:`cloud_trainer.registry.signed_message` (name, version, sha256)
    by the DC key whose fingerprint is ``key_id``. ``serial`` rises with every announcement
    of the DC; ``announce_signature`` signs :func:`topics.signing.announcement_message`
    (name, version, sha256, action, serial) with the same key.
    """

    name: str
    version: str
    sha256: str
    signature: bytes
    key_id: str
    format: str
    size: int
    action: str = "promote"
    parent: str | None = None
    artifact: bytes | None = None
    url: str | None = None
    metrics: dict[str, float] = dc_field(default_factory=dict)
    created_at_ms: int = 0
    serial: int = 0
    announce_signature: bytes = b""


def _checked_id(obj: dict[str, Any], key: str) -> str:
    value = field(obj, key, str)
    try:
        return check_id(value, key)
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None


def encode_hard_example(ex: HardExample) -> bytes:
    if ex.kind not in KINDS:
        raise ValueError(f"kind {ex.kind!r} not in {KINDS}")
    if ex.encoding not in INPUT_ENCODINGS:
        raise ValueError(f"encoding {ex.encoding!r} not in {INPUT_ENCODINGS}")
    if ex.encoding == "pcm_s16le" and not ex.sample_rate:
        raise ValueError("pcm_s16le needs a sample_rate")
    if ex.stream:
        check_id(ex.stream, "stream")
    why = _context_error(ex.encoding, ex.data, ex.sample_rate, ex.lead_s, ex.tail_s)
    if why:
        raise ValueError(why)
    return pack("hard_example", HARD_EXAMPLE_VERSION, {
        "device": check_id(ex.device, "device"),
        "model": check_id(ex.model, "model"),
        "model_version": ex.model_version,
        "kind": ex.kind,
        "stream": ex.stream,
        "seq": ex.seq,
        "item": ex.item,
        "encoding": ex.encoding,
        "sample_rate": ex.sample_rate,
        "data": ex.data,
        "result": ex.result,
        "confidences": [float(c) for c in ex.confidences],
        "reasons": list(ex.reasons),
        "node": ex.node,
        "captured_at_ms": ex.captured_at_ms,
        "lead_s": float(ex.lead_s),
        "tail_s": float(ex.tail_s),
    })


def decode_hard_example(payload: bytes, max_bytes: int = MAX_HARD_EXAMPLE_BYTES) -> HardExample:
    obj = unpack(payload, "hard_example", _HARD_EXAMPLE_VERSIONS, max_bytes)
    kind = field(obj, "kind", str)
    if kind not in KINDS:
        raise ContractError("bad_field", f"kind {kind!r}")
    encoding = field(obj, "encoding", str)
    if encoding not in INPUT_ENCODINGS:
        raise ContractError("bad_encoding", f"encoding {encoding!r}")
    sample_rate = opt_field(obj, "sample_rate", int, None)
    if encoding == "pcm_s16le" and (sample_rate is None or sample_rate <= 0):
        raise ContractError("bad_field", "pcm_s16le without a positive sample_rate")
    data = field(obj, "data", bytes)
    if not data:
        raise ContractError("empty_input", "zero-size input data")
    seq, item = field(obj, "seq", int), field(obj, "item", int)
    if seq < 0 or item < 0:
        raise ContractError("bad_field", f"seq {seq} / item {item} < 0")
    stream = opt_field(obj, "stream", str, "")
    if stream:
        try:
            check_id(stream, "stream")
        except ValueError as exc:
            raise ContractError("bad_field", str(exc)) from None
    confidences = field(obj, "confidences", list)
    if not all(isinstance(c, float) and 0.0 <= c <= 1.0 for c in confidences):
        raise ContractError("bad_field", "confidences must be floats in [0, 1]")
    reasons = field(obj, "reasons", list)
    if not all(isinstance(r, str) for r in reasons):
        raise ContractError("bad_field", "reasons must be strings")
    lead_s = float(opt_field(obj, "lead_s", (int, float), 0.0))  # absent in v1
    tail_s = float(opt_field(obj, "tail_s", (int, float), 0.0))
    why = _context_error(encoding, data, sample_rate, lead_s, tail_s)
    if why:
        raise ContractError("bad_field", why)
    return HardExample(
        device=_checked_id(obj, "device"),
        model=_checked_id(obj, "model"),
        model_version=field(obj, "model_version", str),
        kind=kind,
        seq=seq,
        item=item,
        encoding=encoding,
        data=data,
        result=field(obj, "result", str),
        confidences=tuple(confidences),
        reasons=tuple(reasons),
        node=field(obj, "node", str),
        captured_at_ms=field(obj, "captured_at_ms", int),
        stream=stream,
        sample_rate=sample_rate,
        lead_s=lead_s,
        tail_s=tail_s,
    )


def encode_label(label: Label) -> bytes:
    return pack("label", LABEL_VERSION, {
        "key": label.key,
        "text": label.text,
        "source": label.source,
        "labelled_at_ms": label.labelled_at_ms,
    })


def decode_label(payload: bytes) -> Label:
    obj = unpack(payload, "label", frozenset({LABEL_VERSION}), MAX_LABEL_BYTES)
    key = field(obj, "key", str)
    if key.count("|") != 4:
        raise ContractError("bad_field", f"key {key!r} is not a hard-example key")
    return Label(
        key=key,
        text=field(obj, "text", str),
        source=field(obj, "source", str),
        labelled_at_ms=field(obj, "labelled_at_ms", int),
    )


def encode_model_update(update: ModelUpdate) -> bytes:
    if update.action not in UPDATE_ACTIONS:
        raise ValueError(f"action {update.action!r} not in {UPDATE_ACTIONS}")
    if (update.artifact is None) == (update.url is None):
        raise ValueError("a model update carries exactly one of artifact and url")
    return pack("model_update", MODEL_UPDATE_VERSION, {
        "name": check_id(update.name, "model"),
        "version": check_id(update.version, "version"),
        "action": update.action,
        "parent": update.parent,
        "sha256": update.sha256,
        "signature": update.signature,
        "key_id": update.key_id,
        "format": update.format,
        "size": update.size,
        "artifact": update.artifact,
        "url": update.url,
        "metrics": {k: float(v) for k, v in update.metrics.items()},
        "created_at_ms": update.created_at_ms,
        "serial": update.serial,
        "announce_signature": update.announce_signature,
    })


def decode_model_update(payload: bytes, max_bytes: int = MAX_MODEL_UPDATE_BYTES) -> ModelUpdate:
    obj = unpack(payload, "model_update", frozenset({MODEL_UPDATE_VERSION}), max_bytes)
    action = field(obj, "action", str)
    if action not in UPDATE_ACTIONS:
        raise ContractError("bad_field", f"action {action!r}")
    artifact = opt_field(obj, "artifact", bytes, None)
    url = opt_field(obj, "url", str, None)
    if (artifact is None) == (url is None):
        raise ContractError("bad_field", "exactly one of artifact and url must be set")
    size = field(obj, "size", int)
    if artifact is not None and size != len(artifact):
        raise ContractError("bad_field", f"size {size} != {len(artifact)} artifact bytes")
    sha = field(obj, "sha256", str)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ContractError("bad_field", "sha256 must be 64 lowercase hex digits")
    metrics = opt_field(obj, "metrics", dict, {})
    if not all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items()):
        raise ContractError("bad_field", "metrics must map str to float")
    return ModelUpdate(
        name=_checked_id(obj, "name"),
        version=_checked_id(obj, "version"),
        action=action,
        parent=opt_field(obj, "parent", str, None),
        sha256=sha,
        signature=opt_field(obj, "signature", bytes, b""),
        key_id=opt_field(obj, "key_id", str, ""),
        format=field(obj, "format", str),
        size=size,
        artifact=artifact,
        url=url,
        metrics=metrics,
        created_at_ms=field(obj, "created_at_ms", int),
        serial=opt_field(obj, "serial", int, 0),
        announce_signature=opt_field(obj, "announce_signature", bytes, b""),
    )
