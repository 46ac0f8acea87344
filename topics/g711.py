"""G.711 mu-law (PCMU) and A-law (PCMA), exact to the ITU tables, as numpy lookup tables.

Decoding maps each of the 256 codes to its 16-bit reconstruction value; encoding maps each
of the 65536 int16 values to its code (the Sun/CCITT reference algorithm that ``audioop``
also implements), so both directions are one table lookup.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ULAW_DECODE",
    "ALAW_DECODE",
    "ULAW_ENCODE",
    "ALAW_ENCODE",
    "ulaw_decode",
    "alaw_decode",
    "ulaw_encode",
    "alaw_encode",
    "decode",
    "encode",
]


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _segment(value: np.ndarray, ends: tuple[int, ...]) -> np.ndarray:
    """Index of the first segment end >= value (8 when beyond the last)."""
    return np.searchsorted(np.asarray(ends), value, side="left")


def _ulaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = _segment(mag, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, uval) ^ mask
    return np.roll(code.astype(np.uint8), -32768)  # index by the int16 bit pattern as uint16


def _alaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    mant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mant) ^ mask
    return np.roll(code.astype(np.uint8), -32768)


ULAW_DECODE: np.ndarray = _ulaw_decode_table()
ALAW_DECODE: np.ndarray = _alaw_decode_table()
ULAW_ENCODE: np.ndarray = _ulaw_encode_table()
ALAW_ENCODE: np.ndarray = _alaw_encode_table()
for _t in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _t.flags.writeable = False


def _codes(data: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data


def ulaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """mu-law codes -> int16 samples."""
    return ULAW_DECODE[_codes(data)]


def alaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """A-law codes -> int16 samples."""
    return ALAW_DECODE[_codes(data)]


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> mu-law bytes."""
    return ULAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)].tobytes()


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> A-law bytes."""
    return ALAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)].tobytes()


def decode(codec: str, data: bytes | np.ndarray) -> np.ndarray:
    """Decode ``"pcmu"`` or ``"pcma"`` bytes to int16."""
    if codec == "pcmu":
        return ulaw_decode(data)
    if codec == "pcma":
        return alaw_decode(data)
    raise ValueError(f"codec {codec!r} is not pcmu or pcma")


def encode(codec: str, samples: np.ndarray) -> bytes:
    """Encode int16 samples as ``"pcmu"`` or ``"pcma"`` bytes."""
    if codec == "pcmu":
        return ulaw_encode(samples)
    if codec == "pcma":
        return alaw_encode(samples)
    raise ValueError(f"codec {codec!r} is not pcmu or pcma")
