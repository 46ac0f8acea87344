"""G.711 against the stdlib reference (audioop, Python <= 3.12) on every code and every sample."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from topics import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_decode_all_codes() -> None:
    ref = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype=np.int16)
    got = g711.ulaw_decode(ALL_CODES)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, ref)


def test_alaw_decode_all_codes() -> None:
    ref = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype=np.int16)
    np.testing.assert_array_equal(g711.alaw_decode(ALL_CODES), ref)


def test_ulaw_encode_full_int16_range() -> None:
    ref = np.frombuffer(audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(np.frombuffer(g711.ulaw_encode(ALL_SAMPLES), dtype=np.uint8), ref)


def test_alaw_encode_full_int16_range() -> None:
    ref = np.frombuffer(audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(np.frombuffer(g711.alaw_encode(ALL_SAMPLES), dtype=np.uint8), ref)


def test_known_itu_values() -> None:
    # mu-law: 0xFF and 0x7F are the two zeros, 0x00 is full-scale negative.
    assert g711.ulaw_decode(b"\xff\x7f\x00\x80").tolist() == [0, 0, -32124, 32124]
    # A-law: 0xD5 / 0x55 are the smallest positive / negative steps, 0xAA full scale positive.
    assert g711.alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_decode_of_encode_is_close(codec: str) -> None:
    x = (np.sin(np.linspace(0, 50, 4000)) * 20000).astype(np.int16)
    y = g711.decode(codec, g711.encode(codec, x)).astype(np.int32)
    err = np.abs(y - x)
    assert err.max() <= 1024  # largest quantisation step of the top segment
    assert np.corrcoef(x, y)[0, 1] > 0.999


def test_unknown_codec() -> None:
    with pytest.raises(ValueError):
        g711.decode("g722", b"\x00")
