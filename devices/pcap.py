"""Read UDP datagrams from packet captures (libpcap and pcapng), and write small libpcap files.

Hand-parsed, no dependencies. Link types: Ethernet (with 802.1Q/802.1ad tags), Linux cooked
(SLL, SLL2), raw IP, BSD loopback; IPv4 (unfragmented) and IPv6 (UDP as first next header).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PcapError", "PcapRecord", "LINKTYPES", "read_pcap", "write_pcap"]

LINKTYPES: dict[str, int] = {"null": 0, "ethernet": 1, "raw": 101, "sll": 113, "ipv4": 228, "ipv6": 229, "sll2": 276}
_PCAPNG_SHB = 0x0A0D0D0A


class PcapError(ValueError):
    """Not a capture this module can read."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    """One UDP datagram seen at ``time_s`` (capture clock, seconds)."""

    time_s: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


# --------------------------------------------------------------------------- reading

def read_pcap(path: Path | str) -> list[PcapRecord]:
    """Every UDP datagram in a libpcap or pcapng file, in file order (other packets skipped)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        raise PcapError(f"{path}: {len(data)} bytes is too short for a capture")
    frames = _pcapng_frames(data) if struct.unpack_from("<I", data)[0] == _PCAPNG_SHB else _pcap_frames(data)
    out = []
    for t, linktype, frame in frames:
        rec = _udp(t, linktype, frame)
        if rec is not None:
            out.append(rec)
    return out


def _pcap_frames(data: bytes) -> Iterator[tuple[float, int, bytes]]:
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise PcapError(f"unknown capture magic {magic.hex()}")
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    pos = 24
    rec = struct.Struct(endian + "IIII")
    while pos + rec.size <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, pos)
        pos += rec.size
        if pos + incl > len(data):
            break  # truncated last record
        yield sec + frac * scale, linktype, data[pos:pos + incl]
        pos += incl


def _pcapng_frames(data: bytes) -> Iterator[tuple[float, int, bytes]]:
    pos = 0
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    while pos + 12 <= len(data):
        btype = struct.unpack_from(endian + "I", data, pos)[0]
        if btype == _PCAPNG_SHB:
            bom = data[pos + 8:pos + 12]
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else ""
            if not endian:
                raise PcapError(f"bad pcapng byte-order magic {bom.hex()}")
            interfaces = []
        length = struct.unpack_from(endian + "I", data, pos + 4)[0]
        if length < 12 or length % 4 or pos + length > len(data):
            break
        body = data[pos + 8:pos + length - 4]
        if btype == 1 and len(body) >= 8:  # interface description
            linktype = struct.unpack_from(endian + "H", body)[0]
            interfaces.append((linktype, _tsresol(body[8:], endian)))
        elif btype == 6 and len(body) >= 20:  # enhanced packet
            iface, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", body)
            if iface < len(interfaces):
                linktype, res = interfaces[iface]
                yield ((hi << 32) | lo) * res, linktype, body[20:20 + cap]
        elif btype == 3 and len(body) >= 4 and interfaces:  # simple packet: no timestamp
            yield 0.0, interfaces[0][0], body[4:]
        pos += length


def _tsresol(options: bytes, endian: str) -> float:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[pos + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        pos += 4 + length + (-length % 4)
    return 1e-6


def _udp(t: float, linktype: int, frame: bytes) -> PcapRecord | None:
    ip = _ip_of(linktype, frame)
    if ip is None or not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        total, frag = struct.unpack_from("!H2xH", ip, 2)
        if ip[9] != 17 or frag & 0x3FFF or ihl < 20:  # not UDP, or a fragment
            return None
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        udp = ip[ihl:min(total, len(ip))] if total else ip[ihl:]
    elif version == 6 and len(ip) >= 40:
        if ip[6] != 17:
            return None
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        udp = ip[40:40 + struct.unpack_from("!H", ip, 4)[0]]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", udp)
    end = length if 8 <= length <= len(udp) else len(udp)
    return PcapRecord(time_s=t, src=src, sport=sport, dst=dst, dport=dport, payload=bytes(udp[8:end]))


def _ip_of(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:  # Ethernet, possibly VLAN-tagged
        pos, ethertype = 12, None
        while pos + 2 <= len(frame):
            ethertype = struct.unpack_from("!H", frame, pos)[0]
            if ethertype in (0x8100, 0x88A8):
                pos += 4
                continue
            break
        return frame[pos + 2:] if ethertype in (0x0800, 0x86DD) else None
    if linktype == 113:  # Linux cooked v1
        return frame[16:] if len(frame) >= 16 and struct.unpack_from("!H", frame, 14)[0] in (0x0800, 0x86DD) else None
    if linktype == 276:  # Linux cooked v2
        return frame[20:] if len(frame) >= 20 and struct.unpack_from("!H", frame, 0)[0] in (0x0800, 0x86DD) else None
    if linktype in (101, 228, 229, 12, 14):  # raw IP
        return frame
    if linktype == 0:  # BSD loopback: 4-byte address family in host order
        return frame[4:] if len(frame) >= 4 else None
    return None


# --------------------------------------------------------------------------- writing

def write_pcap(path: Path | str, records: Iterable[PcapRecord], linktype: str = "ethernet") -> int:
    """Write IPv4/UDP ``records`` as a little-endian microsecond libpcap file; return the count."""
    if linktype not in ("ethernet", "sll", "raw"):
        raise ValueError(f"linktype {linktype!r} not one of ethernet, sll, raw")
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPES[linktype])]
    n = 0
    for rec in records:
        ip = _ipv4_udp(rec)
        if linktype == "ethernet":
            frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip
        elif linktype == "sll":
            frame = struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", 0x0800) + ip
        else:
            frame = ip
        sec = int(rec.time_s)
        usec = round((rec.time_s - sec) * 1e6)
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
        n += 1
    Path(path).write_bytes(b"".join(out))
    return n


def _ipv4_udp(rec: PcapRecord) -> bytes:
    udp = struct.pack("!HHHH", rec.sport, rec.dport, 8 + len(rec.payload), 0) + rec.payload
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                                   ipaddress.IPv4Address(rec.src).packed, ipaddress.IPv4Address(rec.dst).packed))
    s = sum(struct.unpack("!10H", header))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", header, 10, ~s & 0xFFFF)
    return bytes(header) + udp
