"""Image bytes -> grayscale pixels, with the checks that keep bad input from hurting us.

The declared encoding must match the magic bytes, and the pixel count is read from the
header *before* decoding, so a small file that claims 100k x 100k pixels is refused
without allocating anything.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from topics.codec import ContractError

__all__ = ["image_size", "decode_bgr", "decode_gray", "thumbnail_jpeg"]

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ContractError("bad_image", f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise ContractError("bad_image", f"JPEG segment length {length}")
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        i += 2 + length
    raise ContractError("bad_image", "JPEG has no frame header")


def image_size(data: bytes, encoding: str) -> tuple[int, int]:
    """(width, height) from the header; raise ContractError if the bytes are not that encoding."""
    if not data:
        raise ContractError("empty_image", "zero-size image data")
    if encoding == "jpeg":
        if not data.startswith(_JPEG_MAGIC):
            raise ContractError("bad_image", "declared jpeg, bytes are not JPEG")
        width, height = _jpeg_size(data)
    elif encoding == "png":
        if not data.startswith(_PNG_MAGIC) or len(data) < 24 or data[12:16] != b"IHDR":
            raise ContractError("bad_image", "declared png, bytes are not PNG")
        width, height = struct.unpack_from(">II", data, 16)
    else:
        raise ContractError("bad_encoding", f"encoding {encoding!r}")
    if width == 0 or height == 0:
        raise ContractError("empty_image", f"image is {width}x{height}")
    return width, height


def _decode(data: bytes, encoding: str, max_pixels: int, flags: int) -> np.ndarray:
    width, height = image_size(data, encoding)
    if width * height > max_pixels:
        raise ContractError("image_too_large", f"{width}x{height} > {max_pixels} pixels")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise ContractError("bad_image", f"{encoding} data does not decode")
    return image


def decode_gray(data: bytes, encoding: str, max_pixels: int) -> np.ndarray:
    """Decode to a uint8 grayscale array, refusing images above ``max_pixels``."""
    return _decode(data, encoding, max_pixels, cv2.IMREAD_GRAYSCALE)


def decode_bgr(data: bytes, encoding: str, max_pixels: int) -> np.ndarray:
    """Decode to a uint8 (H, W, 3) BGR array (gray images are expanded), same checks."""
    return _decode(data, encoding, max_pixels, cv2.IMREAD_COLOR)


def thumbnail_jpeg(data: bytes, encoding: str, max_pixels: int, max_side: int,
                   quality: int = 70) -> tuple[bytes, int, int, int, int]:
    """A small JPEG of an image: (jpeg, width, height, full width, full height), no side above ``max_side``."""
    image = decode_bgr(data, encoding, max_pixels)
    full_h, full_w = image.shape[:2]
    scale = min(1.0, max_side / max(full_w, full_h))
    w, h = max(1, round(full_w * scale)), max(1, round(full_h * scale))
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ContractError("bad_image", "thumbnail did not encode")
    return buf.tobytes(), w, h, full_w, full_h
