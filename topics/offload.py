"""Edge <-> DC inference over Kafka: frames spilled by an overloaded edge, results back.

:class:`FrameReturn` (MQTT ``names.frame_returns(device)``): an edge hands a ``fallback`` frame
back to its device instead of shedding it; the device serves it and publishes its one final outcome.

``offload.dc-frames`` (edge -> DC inference workers, one consumer group, keyed by device) carries
:class:`DcRequest`; ``offload.dc-results`` (DC -> edges, keyed by the edge node) carries
:class:`DcReply`, which the edge that asked publishes on the device's normal MQTT result topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from topics.codec import ContractError, field, opt_field, pack, unpack
from topics.names import check_id
from topics.vision import (
    Frame,
    VisionResult,
    decode_frame,
    decode_result,
    encode_frame,
    encode_result,
)

__all__ = [
    "DC_REPLY_VERSION",
    "DC_REQUEST_VERSION",
    "KAFKA_DC_DEAD_LETTERS",
    "KAFKA_DC_FRAMES",
    "KAFKA_DC_RESULTS",
    "MAX_DC_BYTES",
    "DcReply",
    "DcRequest",
    "FRAME_RETURN_VERSION",
    "FrameReturn",
    "decode_frame_return",
    "encode_frame_return",
    "decode_dc_reply",
    "decode_dc_request",
    "encode_dc_reply",
    "encode_dc_request",
]

KAFKA_DC_FRAMES = "offload.dc-frames"
KAFKA_DC_RESULTS = "offload.dc-results"
# records of offload.dc-frames that are no request: ``topics.deadletter.DeadLetter`` (stage "dc_inference")
KAFKA_DC_DEAD_LETTERS = "offload.dc-dead-letters"
DC_REQUEST_VERSION = 1
DC_REPLY_VERSION = 1
FRAME_RETURN_VERSION = 1
MAX_DC_BYTES = 4 * 1024 * 1024 + (64 << 10)


@dataclass(frozen=True, slots=True)
class DcRequest:
    """One frame an edge asks the DC to serve. ``deadline_ms``: absolute (epoch ms), or None."""

    request_id: str
    reply_to: str  # the edge node
    sent_at_ms: int
    frame: Frame
    deadline_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DcReply:
    """The DC's answer: a result (``served_by="dc"``) or the reason it could not serve the frame."""

    request_id: str
    reply_to: str
    result: VisionResult | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError("a reply carries exactly one of result and error")


def encode_dc_request(req: DcRequest) -> bytes:
    return pack("dc_request", DC_REQUEST_VERSION, {
        "request_id": check_id(req.request_id, "request_id"), "reply_to": check_id(req.reply_to, "node"),
        "sent_at_ms": req.sent_at_ms, "deadline_ms": req.deadline_ms, "frame": encode_frame(req.frame),
    })


def decode_dc_request(payload: bytes) -> DcRequest:
    obj = unpack(payload, "dc_request", frozenset({DC_REQUEST_VERSION}), MAX_DC_BYTES)
    request_id, reply_to = field(obj, "request_id", str), field(obj, "reply_to", str)
    _check(request_id, reply_to)
    return DcRequest(request_id=request_id, reply_to=reply_to, sent_at_ms=field(obj, "sent_at_ms", int),
                     frame=decode_frame(field(obj, "frame", bytes), MAX_DC_BYTES),
                     deadline_ms=opt_field(obj, "deadline_ms", int, None))


def encode_dc_reply(reply: DcReply) -> bytes:
    return pack("dc_reply", DC_REPLY_VERSION, {
        "request_id": reply.request_id, "reply_to": reply.reply_to, "error": reply.error,
        "result": None if reply.result is None else encode_result(reply.result),
    })


def decode_dc_reply(payload: bytes) -> DcReply:
    obj = unpack(payload, "dc_reply", frozenset({DC_REPLY_VERSION}), 1 << 20)
    request_id, reply_to = field(obj, "request_id", str), field(obj, "reply_to", str)
    _check(request_id, reply_to)
    result = opt_field(obj, "result", bytes, None)
    error = opt_field(obj, "error", str, None)
    if (result is None) == (error is None):
        raise ContractError("bad_field", "a reply carries exactly one of result and error")
    return DcReply(request_id, reply_to, None if result is None else decode_result(result), error)


def _check(request_id: str, reply_to: str) -> None:
    try:
        check_id(request_id, "request_id")
        check_id(reply_to, "node")
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None


@dataclass(frozen=True, slots=True)
class FrameReturn:
    """An edge gives frame ``seq`` of ``device`` back (it would have shed it for ``reason``); NOT an
    outcome: the device, which marked the frame ``fallback``, serves it and publishes the outcome."""

    device: str
    seq: int
    captured_at_ms: int
    node: str
    reason: str
    at_ms: int


def encode_frame_return(ret: FrameReturn) -> bytes:
    return pack("frame_return", FRAME_RETURN_VERSION, {
        "device": check_id(ret.device, "device"), "seq": ret.seq, "captured_at_ms": ret.captured_at_ms,
        "node": check_id(ret.node, "node"), "reason": ret.reason, "at_ms": ret.at_ms,
    })


def decode_frame_return(payload: bytes) -> FrameReturn:
    obj = unpack(payload, "frame_return", frozenset({FRAME_RETURN_VERSION}), 4096)
    device, node = field(obj, "device", str), field(obj, "node", str)
    try:
        check_id(device, "device")
        check_id(node, "node")
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None
    return FrameReturn(device, field(obj, "seq", int), field(obj, "captured_at_ms", int), node,
                       field(obj, "reason", str), field(obj, "at_ms", int))
