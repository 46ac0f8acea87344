"""RTP packets (RFC 3550): parse with validation, build, and RFC 8285 / RFC 6051 header extensions.

Only G.711 payloads are accepted: PT 0 (PCMU) and PT 8 (PCMA), both on an 8 kHz clock.
Every rejection is an :class:`RtpError` with a short stable ``reason``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from topics.codec import ContractError

__all__ = [
    "PT_PCMU",
    "PT_PCMA",
    "PAYLOAD_TYPES",
    "CLOCK_RATE",
    "ONE_BYTE_PROFILE",
    "NTP64_EXT_ID",
    "MAX_PACKET_BYTES",
    "RtpError",
    "RtpPacket",
    "parse_rtp",
    "build_rtp",
    "one_byte_extensions",
    "build_one_byte_extensions",
    "unix_to_ntp64",
    "ntp64_to_unix",
]

PT_PCMU = 0
PT_PCMA = 8
PAYLOAD_TYPES: dict[int, str] = {PT_PCMU: "pcmu", PT_PCMA: "pcma"}
CLOCK_RATE = 8000
ONE_BYTE_PROFILE = 0xBEDE
# Extension element id that carries the RFC 6051 64-bit NTP timestamp of the packet's first
# sample (``urn:ietf:params:rtp-hdrext:ntp-64``). Without SDP the id is fixed by convention.
NTP64_EXT_ID = 1
# Largest packet accepted: 12-byte header + CSRCs + extension + 200 ms of G.711 (1600 bytes)
# with room to spare; a 20 ms packet is 172 bytes. Anything bigger is not a voice packet.
MAX_PACKET_BYTES = 2048

_HEADER = struct.Struct("!BBHII")
_NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class RtpError(ContractError):
    """A packet that is not acceptable RTP. ``reason`` is a short stable code:
    ``oversize``, ``truncated``, ``bad_version``, ``bad_csrc``, ``bad_extension``, ``bad_padding``,
    ``empty_payload``, ``rtcp_packet``, ``unknown_payload_type`` (from :func:`parse_rtp`);
    stream-level codes (``foreign_ssrc``, ``ssrc_change``, ``ts_jump``, ``seq_jump``) come
    from the jitter buffer, which sets ``packet`` to the rejected packet."""

    packet: RtpPacket | None = None


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One parsed RTP packet. ``extension_profile`` is None when the X bit is clear."""

    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    extension_profile: int | None
    extension_data: bytes
    payload: bytes


def parse_rtp(data: bytes, max_bytes: int = MAX_PACKET_BYTES) -> RtpPacket:
    """Parse and validate one RTP packet (G.711 payload types only); raise :class:`RtpError`.

    RFC 8285 one-byte-header extension elements are checked here too (an element that overruns
    the extension, or an NTP-64 element that is not 8 bytes, is ``bad_extension``), so that a
    packet is accepted or rejected as a whole, never half-used."""
    n = len(data)
    if n > max_bytes:
        raise RtpError("oversize", f"{n} bytes > limit {max_bytes}")
    if n < _HEADER.size:
        raise RtpError("truncated", f"{n} bytes < 12-byte RTP header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    version = b0 >> 6
    if version != 2:
        raise RtpError("bad_version", f"version {version}, expected 2")
    if 200 <= b1 <= 204:
        raise RtpError("rtcp_packet", f"RTCP packet type {b1} on the RTP stream")
    padding = bool(b0 & 0x20)
    extension = bool(b0 & 0x10)
    cc = b0 & 0x0F
    pos = _HEADER.size + 4 * cc
    if pos > n:
        raise RtpError("bad_csrc", f"{cc} CSRCs need {pos} bytes, packet has {n}")
    csrcs = struct.unpack_from(f"!{cc}I", data, _HEADER.size) if cc else ()
    profile: int | None = None
    ext_data = b""
    if extension:
        if pos + 4 > n:
            raise RtpError("bad_extension", f"extension header at {pos} beyond {n} bytes")
        profile, words = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + 4 * words
        if end > n:
            raise RtpError("bad_extension", f"extension of {words} words ends at {end} > {n} bytes")
        ext_data = bytes(data[pos + 4:end])
        pos = end
    end = n
    if padding:
        pad = data[-1]
        if pad == 0 or pad > n - pos:
            raise RtpError("bad_padding", f"padding count {pad} with {n - pos} bytes after the header")
        end = n - pad
    pt = b1 & 0x7F
    if pt not in PAYLOAD_TYPES:
        raise RtpError("unknown_payload_type", f"payload type {pt}, accepted {sorted(PAYLOAD_TYPES)}")
    if end <= pos:
        raise RtpError("empty_payload", "no payload bytes")
    packet = RtpPacket(
        version=version,
        padding=padding,
        extension=extension,
        csrc_count=cc,
        marker=bool(b1 & 0x80),
        payload_type=pt,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        csrcs=tuple(csrcs),
        extension_profile=profile,
        extension_data=ext_data,
        payload=bytes(data[pos:end]),
    )
    if profile == ONE_BYTE_PROFILE:
        ntp = one_byte_extensions(packet).get(NTP64_EXT_ID)  # raises bad_extension when malformed
        if ntp is not None and len(ntp) != 8:
            raise RtpError("bad_extension", f"NTP-64 element of {len(ntp)} bytes, expected 8")
    return packet


def build_rtp(
    payload: bytes,
    *,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    extension_profile: int | None = None,
    extension_data: bytes = b"",
    padding: int = 0,
) -> bytes:
    """Serialise one RTP packet. ``extension_data`` must be a multiple of 4 bytes;
    ``padding`` is the number of padding bytes to append (0-255, the last one holds the count)."""
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload_type {payload_type} out of 0..127")
    if len(csrcs) > 15:
        raise ValueError(f"{len(csrcs)} CSRCs > 15")
    if len(extension_data) % 4 or len(extension_data) > 4 * 0xFFFF:
        raise ValueError(f"extension_data of {len(extension_data)} bytes is not a multiple of 4 (or too long)")
    if not 0 <= padding <= 255:
        raise ValueError(f"padding {padding} out of 0..255")
    has_ext = extension_profile is not None
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if has_ext else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | payload_type
    parts = [_HEADER.pack(b0, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)]
    if csrcs:
        parts.append(struct.pack(f"!{len(csrcs)}I", *csrcs))
    if has_ext:
        parts.append(struct.pack("!HH", extension_profile, len(extension_data) // 4))
        parts.append(extension_data)
    parts.append(payload)
    if padding:
        parts.append(bytes(padding - 1) + bytes([padding]))
    return b"".join(parts)


def one_byte_extensions(packet: RtpPacket) -> dict[int, bytes]:
    """The RFC 8285 one-byte-header extension elements of ``packet`` (id -> value).

    Empty if the packet has no extension or another profile; raises ``RtpError("bad_extension")``
    when the element list is malformed."""
    if packet.extension_profile != ONE_BYTE_PROFILE:
        return {}
    out: dict[int, bytes] = {}
    data = packet.extension_data
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0:  # padding byte
            i += 1
            continue
        ext_id, length = b >> 4, (b & 0x0F) + 1
        if ext_id == 15:  # reserved: stop processing (RFC 8285 section 4.2)
            break
        if i + 1 + length > len(data):
            raise RtpError("bad_extension", f"element id {ext_id} of {length} bytes overruns the extension")
        out[ext_id] = data[i + 1:i + 1 + length]
        i += 1 + length
    return out


def build_one_byte_extensions(elements: dict[int, bytes]) -> bytes:
    """Serialise RFC 8285 one-byte-header elements (ids 1-14, values 1-16 bytes), padded to 4 bytes."""
    out = bytearray()
    for ext_id, value in elements.items():
        if not 1 <= ext_id <= 14 or not 1 <= len(value) <= 16:
            raise ValueError(f"one-byte extension id {ext_id} with {len(value)} bytes")
        out.append((ext_id << 4) | (len(value) - 1))
        out += value
    out += bytes(-len(out) % 4)
    return bytes(out)


def unix_to_ntp64(unix_s: float) -> bytes:
    """A Unix time as an 8-byte NTP timestamp (seconds since 1900, 32.32 fixed point)."""
    value = round((unix_s + _NTP_UNIX_OFFSET) * (1 << 32))
    return struct.pack("!Q", value & 0xFFFF_FFFF_FFFF_FFFF)


def ntp64_to_unix(value: bytes) -> float:
    """Inverse of :func:`unix_to_ntp64`; raises ``RtpError("bad_extension")`` unless 8 bytes."""
    if len(value) != 8:
        raise RtpError("bad_extension", f"NTP-64 element of {len(value)} bytes, expected 8")
    (raw,) = struct.unpack("!Q", value)
    return raw / (1 << 32) - _NTP_UNIX_OFFSET
