"""Camera thumbnails: a small JPEG of a frame whose result the archive keeps, for the console's camera tile.

Opt-in at the edge (``vision.publish_thumbnails``, off by default). When on, after the edge publishes a
served result (by the edge or the DC; not a shed one) it publishes a thumbnail of that frame on
:func:`topics.names.thumbnail` (QoS 1), keyed like the result by (device, seq), with the frame's
``case_id``. The archive never reads raw frames: the edge, which has the frame, makes the thumbnail.
Thumbnails travel outside ``results/`` so that result readers (``tail``) never receive a face image;
only the edge agent writes them and only the archive reads them (compose/mosquitto.acl).
"""

from __future__ import annotations

from dataclasses import dataclass

from topics.codec import ContractError, field, opt_case, pack, unpack
from topics.names import check_id

__all__ = ["THUMBNAIL_VERSION", "MAX_THUMBNAIL_BYTES", "Thumbnail", "encode_thumbnail", "decode_thumbnail"]

THUMBNAIL_VERSION = 1
MAX_THUMBNAIL_BYTES = 64 * 1024
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A JPEG of ``width`` x ``height`` pixels of frame ``seq`` of ``device`` (``frame_width`` x
    ``frame_height`` pixels: the coordinates of the result's face boxes)."""

    device: str
    seq: int
    width: int
    height: int
    frame_width: int
    frame_height: int
    jpeg: bytes
    case_id: str | None = None


def encode_thumbnail(t: Thumbnail) -> bytes:
    check_id(t.device, "device")
    if not t.jpeg.startswith(_JPEG_MAGIC) or len(t.jpeg) > MAX_THUMBNAIL_BYTES:
        raise ValueError(f"thumbnail: a JPEG of at most {MAX_THUMBNAIL_BYTES} bytes")
    return pack("thumbnail", THUMBNAIL_VERSION, {
        "device": t.device, "seq": t.seq, "width": t.width, "height": t.height, "frame_width": t.frame_width,
        "frame_height": t.frame_height, "jpeg": t.jpeg, "case_id": t.case_id})


def decode_thumbnail(payload: bytes) -> Thumbnail:
    """Decode and validate; :class:`ContractError` if it breaks the contract."""
    obj = unpack(payload, "thumbnail", frozenset({THUMBNAIL_VERSION}), MAX_THUMBNAIL_BYTES + 1024)
    device = field(obj, "device", str)
    try:
        check_id(device, "device")
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None
    sizes = [field(obj, k, int) for k in ("seq", "width", "height", "frame_width", "frame_height")]
    if sizes[0] < 0 or min(sizes[1:]) < 1 or max(sizes[1:]) > 65535:
        raise ContractError("bad_field", f"seq/size out of range: {sizes}")
    jpeg = field(obj, "jpeg", bytes)
    if not jpeg.startswith(_JPEG_MAGIC) or len(jpeg) > MAX_THUMBNAIL_BYTES:
        raise ContractError("bad_image", f"not a JPEG of at most {MAX_THUMBNAIL_BYTES} bytes")
    return Thumbnail(device, sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], jpeg, case_id=opt_case(obj))
