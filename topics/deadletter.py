"""Dead-letter records: what was rejected, where, and why."""

from __future__ import annotations

from dataclasses import dataclass

from topics.codec import field, pack, unpack

__all__ = ["DEAD_LETTER_VERSION", "MAX_KEPT_PAYLOAD", "DeadLetter", "encode_dead_letter", "decode_dead_letter"]

DEAD_LETTER_VERSION = 1
MAX_KEPT_PAYLOAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message. ``payload`` keeps at most :data:`MAX_KEPT_PAYLOAD` bytes of it."""

    stage: str
    reason: str
    detail: str
    topic: str
    payload: bytes
    payload_size: int
    node: str
    received_at_ms: int


def encode_dead_letter(dl: DeadLetter) -> bytes:
    return pack("dead_letter", DEAD_LETTER_VERSION, {
        "stage": dl.stage,
        "reason": dl.reason,
        "detail": dl.detail[:1000],
        "topic": dl.topic,
        "payload": dl.payload[:MAX_KEPT_PAYLOAD],
        "payload_size": dl.payload_size,
        "node": dl.node,
        "received_at_ms": dl.received_at_ms,
    })


def decode_dead_letter(payload: bytes) -> DeadLetter:
    obj = unpack(payload, "dead_letter", frozenset({DEAD_LETTER_VERSION}), 1 << 20)
    return DeadLetter(
        stage=field(obj, "stage", str),
        reason=field(obj, "reason", str),
        detail=field(obj, "detail", str),
        topic=field(obj, "topic", str),
        payload=field(obj, "payload", bytes),
        payload_size=field(obj, "payload_size", int),
        node=field(obj, "node", str),
        received_at_ms=field(obj, "received_at_ms", int),
    )
