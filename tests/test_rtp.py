"""RTP parsing and validation on crafted packets."""

from __future__ import annotations

import struct

import pytest

from topics.rtp import (
    NTP64_EXT_ID,
    ONE_BYTE_PROFILE,
    RtpError,
    build_one_byte_extensions,
    build_rtp,
    ntp64_to_unix,
    one_byte_extensions,
    parse_rtp,
    unix_to_ntp64,
)

PAYLOAD = bytes(range(160))


def _reason(data: bytes) -> str:
    with pytest.raises(RtpError) as info:
        parse_rtp(data)
    return info.value.reason


def test_plain_packet_round_trip() -> None:
    data = build_rtp(PAYLOAD, payload_type=8, sequence=65535, timestamp=0xFFFFFFF0, ssrc=0xDEADBEEF, marker=True)
    assert len(data) == 12 + 160
    p = parse_rtp(data)
    assert (p.version, p.padding, p.extension, p.csrc_count, p.marker) == (2, False, False, 0, True)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc) == (8, 65535, 0xFFFFFFF0, 0xDEADBEEF)
    assert p.payload == PAYLOAD and p.csrcs == () and p.extension_profile is None


def test_hand_made_header_bytes() -> None:
    # V=2 P=0 X=0 CC=0 | M=0 PT=0 | seq 0x1234 | ts 0x01020304 | ssrc 0x0a0b0c0d
    data = bytes.fromhex("80001234010203040a0b0c0d") + b"\xff" * 8
    p = parse_rtp(data)
    assert (p.sequence, p.timestamp, p.ssrc, p.payload_type, p.marker) == (0x1234, 0x01020304, 0x0A0B0C0D, 0, False)


def test_csrcs_extension_and_padding_together() -> None:
    ext = build_one_byte_extensions({NTP64_EXT_ID: unix_to_ntp64(1_700_000_000.25), 3: b"\x07"})
    data = build_rtp(PAYLOAD, payload_type=0, sequence=1, timestamp=2, ssrc=3, csrcs=(10, 20, 30),
                     extension_profile=ONE_BYTE_PROFILE, extension_data=ext, padding=7)
    p = parse_rtp(data)
    assert p.csrc_count == 3 and p.csrcs == (10, 20, 30)
    assert p.padding and p.extension and p.extension_profile == ONE_BYTE_PROFILE
    assert p.payload == PAYLOAD  # padding stripped, extension skipped
    elements = one_byte_extensions(p)
    assert elements[3] == b"\x07"
    assert ntp64_to_unix(elements[NTP64_EXT_ID]) == pytest.approx(1_700_000_000.25, abs=1e-6)


def test_other_extension_profile_is_skipped_not_interpreted() -> None:
    data = build_rtp(PAYLOAD, payload_type=0, sequence=1, timestamp=2, ssrc=3,
                     extension_profile=0x1234, extension_data=b"abcdefgh")
    p = parse_rtp(data)
    assert p.extension_data == b"abcdefgh" and p.payload == PAYLOAD
    assert one_byte_extensions(p) == {}


@pytest.mark.parametrize("size", [0, 1, 11])
def test_truncated(size: int) -> None:
    assert _reason(build_rtp(PAYLOAD, payload_type=0, sequence=1, timestamp=2, ssrc=3)[:size]) == "truncated"


@pytest.mark.parametrize("version", [0, 1, 3])
def test_bad_version(version: int) -> None:
    data = bytearray(build_rtp(PAYLOAD, payload_type=0, sequence=1, timestamp=2, ssrc=3))
    data[0] = (data[0] & 0x3F) | (version << 6)
    assert _reason(bytes(data)) == "bad_version"


def test_csrc_list_longer_than_packet() -> None:
    data = bytearray(build_rtp(b"\x00" * 8, payload_type=0, sequence=1, timestamp=2, ssrc=3))
    data[0] |= 0x0F  # 15 CSRCs = 60 bytes, packet has 8 after the header
    assert _reason(bytes(data)) == "bad_csrc"


def test_extension_header_missing_or_overlong() -> None:
    data = bytearray(build_rtp(b"", payload_type=0, sequence=1, timestamp=2, ssrc=3))
    data[0] |= 0x10
    assert _reason(bytes(data) + b"\xbe\xde") == "bad_extension"  # 2 of 4 header bytes
    overlong = bytes(data) + struct.pack("!HH", ONE_BYTE_PROFILE, 100) + b"\x00" * 8
    assert _reason(overlong) == "bad_extension"


def test_malformed_one_byte_elements() -> None:
    # element id 2 claims 16 bytes in a 4-byte extension
    data = build_rtp(PAYLOAD, payload_type=0, sequence=1, timestamp=2, ssrc=3,
                     extension_profile=ONE_BYTE_PROFILE, extension_data=bytes([0x2F, 1, 2, 3]))
    with pytest.raises(RtpError) as info:
        one_byte_extensions(parse_rtp(data))
    assert info.value.reason == "bad_extension"


@pytest.mark.parametrize("count", [0, 200])
def test_bad_padding_count(count: int) -> None:
    data = bytearray(build_rtp(PAYLOAD[:20], payload_type=0, sequence=1, timestamp=2, ssrc=3))
    data[0] |= 0x20
    data[-1] = count
    assert _reason(bytes(data)) == "bad_padding"


def test_padding_eating_the_whole_payload() -> None:
    data = bytearray(build_rtp(b"\x00\x00\x00\x04", payload_type=0, sequence=1, timestamp=2, ssrc=3))
    data[0] |= 0x20
    assert _reason(bytes(data)) == "empty_payload"


@pytest.mark.parametrize("pt", [3, 9, 18, 96, 127])
def test_unknown_payload_type(pt: int) -> None:
    with pytest.raises(RtpError) as info:
        parse_rtp(build_rtp(PAYLOAD, payload_type=pt, sequence=1, timestamp=2, ssrc=3))
    assert info.value.reason == "unknown_payload_type"
    assert str(pt) in info.value.detail


def test_rtcp_on_the_rtp_topic() -> None:
    sender_report = bytes.fromhex("80c8000601020304") + b"\x00" * 20
    assert _reason(sender_report) == "rtcp_packet"


def test_empty_payload() -> None:
    assert _reason(build_rtp(b"", payload_type=0, sequence=1, timestamp=2, ssrc=3)) == "empty_payload"


def test_build_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_rtp(PAYLOAD, payload_type=128, sequence=1, timestamp=2, ssrc=3)
    with pytest.raises(ValueError):
        build_rtp(PAYLOAD, payload_type=0, sequence=1, timestamp=2, ssrc=3, extension_profile=1, extension_data=b"abc")


def test_ntp64_round_trip_and_errors() -> None:
    t = 1_754_000_000.123456
    assert ntp64_to_unix(unix_to_ntp64(t)) == pytest.approx(t, abs=1e-6)
    with pytest.raises(RtpError):
        ntp64_to_unix(b"\x00" * 7)
