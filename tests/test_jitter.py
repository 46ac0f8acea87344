"""Jitter buffer and leg decoder: reordering, loss, duplicates, late packets, wraparound, resets."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edge_agent.speech.jitter import JitterBuffer, JitterConfig, PcmFrame
from edge_agent.speech.stream import SAMPLE_RATE, LegDecoder
from inference.resample import resample_8k_to_16k
from topics import g711
from topics.rtp import (
    NTP64_EXT_ID,
    ONE_BYTE_PROFILE,
    RtpPacket,
    build_one_byte_extensions,
    build_rtp,
    parse_rtp,
    unix_to_ntp64,
)

FRAME = 160
DT = 0.02


def _signal(n_packets: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_packets * FRAME) / 8000
    x = 8000 * np.sin(2 * np.pi * 300 * t) + rng.normal(0, 1500, len(t))
    return x.clip(-32768, 32767).astype(np.int16)


def _wire(x: np.ndarray, seq0: int = 1000, ts0: int = 5000, ssrc: int = 0x1234, pt: int = 0,
          ts_step: int = FRAME, ntp0: float | None = None) -> list[bytes]:
    codec = "pcmu" if pt == 0 else "pcma"
    out = []
    for k in range(len(x) // FRAME):
        ext: dict[str, object] = {}
        if ntp0 is not None:
            ntp = unix_to_ntp64(ntp0 + k * ts_step / 8000)
            ext = {"extension_profile": ONE_BYTE_PROFILE,
                   "extension_data": build_one_byte_extensions({NTP64_EXT_ID: ntp})}
        out.append(build_rtp(g711.encode(codec, x[k * FRAME:(k + 1) * FRAME]), payload_type=pt,
                             sequence=(seq0 + k) & 0xFFFF, timestamp=(ts0 + k * ts_step) & 0xFFFFFFFF,
                             ssrc=ssrc, marker=k == 0, **ext))  # type: ignore[arg-type]
    return out


def _packets(x: np.ndarray, **kw: object) -> list[RtpPacket]:
    return [parse_rtp(b) for b in _wire(x, **kw)]  # type: ignore[arg-type]


def _decoded(x: np.ndarray, pt: int = 0) -> np.ndarray:
    codec = "pcmu" if pt == 0 else "pcma"
    return g711.decode(codec, g711.encode(codec, x))


def _run(jb: JitterBuffer, packets: list[RtpPacket], order: list[int]) -> tuple[list[PcmFrame], list]:
    frames, rejected = [], []
    for k, i in enumerate(order):
        f, r = jb.push(packets[i], k * DT)
        frames += f
        rejected += r
    f, r = jb.flush(1e9, final=True)
    return frames + f, rejected + r


def _joined(frames: list[PcmFrame]) -> np.ndarray:
    for a, b in zip(frames, frames[1:]):
        if a.segment == b.segment:
            assert b.offset == a.offset + len(a.samples), "frames are not contiguous"
    return np.concatenate([f.samples for f in frames])


def test_in_order_stream_is_decoded_exactly() -> None:
    x = _signal(50)
    jb = JitterBuffer()
    frames, rejected = _run(jb, _packets(x), list(range(50)))
    assert rejected == []
    np.testing.assert_array_equal(_joined(frames), _decoded(x))
    c = jb.counters
    assert (c.packets, c.played, c.lost, c.late, c.duplicates, c.reordered, c.concealed) == (50, 50, 0, 0, 0, 0, 0)
    assert frames[0].new_segment and frames[0].offset == 0 and frames[0].timestamp == 5000


def test_in_order_packets_are_released_on_arrival_after_prefill() -> None:
    x = _signal(20)
    jb = JitterBuffer(JitterConfig(latency_s=0.06))
    released_at = []
    for k, p in enumerate(_packets(x)):
        frames, _ = jb.push(p, k * DT)
        released_at += [k] * sum(len(f.samples) // FRAME for f in frames)
    # prefill waits for > 60 ms of audio (4 packets), afterwards each packet leaves on arrival
    assert released_at[:4] == [3, 3, 3, 3]
    assert released_at[4:] == list(range(4, 20))


def test_reordering_within_latency_is_repaired() -> None:
    x = _signal(40)
    order = list(range(40))
    order[10], order[13] = order[13], order[10]  # packet 10 three places late (60 ms)
    order[20], order[21] = order[21], order[20]
    jb = JitterBuffer(JitterConfig(latency_s=0.06))
    frames, _ = _run(jb, _packets(x), order)
    np.testing.assert_array_equal(_joined(frames), _decoded(x))
    assert jb.counters.reordered == 4 and jb.counters.lost == 0 and jb.counters.late == 0


def test_too_late_packet_is_dropped_and_its_time_concealed() -> None:
    x = _signal(40)
    order = list(range(40))
    order.remove(10)
    order.insert(18, 10)  # arrives 8 packets (160 ms) late
    jb = JitterBuffer(JitterConfig(latency_s=0.06))
    frames, _ = _run(jb, _packets(x), order)
    y, ref = _joined(frames), _decoded(x)
    assert len(y) == len(ref)
    c = jb.counters
    assert (c.late, c.lost, c.concealed, c.played) == (1, 1, FRAME, 39)
    np.testing.assert_array_equal(y[:10 * FRAME], ref[:10 * FRAME])
    np.testing.assert_array_equal(y[11 * FRAME:], ref[11 * FRAME:])


def test_loss_concealment_repeats_last_packet_with_fade() -> None:
    x = _signal(30)
    order = [i for i in range(30) if i not in (10, 11, 12)]  # 60 ms gap
    jb = JitterBuffer(JitterConfig(fade_s=0.01))
    frames, _ = _run(jb, _packets(x), order)
    y, ref = _joined(frames), _decoded(x)
    assert len(y) == len(ref) and jb.counters.lost == 3 and jb.counters.concealed == 3 * FRAME
    hole = y[10 * FRAME:13 * FRAME].astype(np.float64)
    last = ref[9 * FRAME:10 * FRAME].astype(np.float64)
    fade = 80  # 10 ms
    gain = 1 - np.arange(1, fade + 1) / fade
    np.testing.assert_allclose(hole[:fade], np.trunc(last[:fade] * gain), atol=1)
    assert not hole[fade:].any()  # comfort silence after the fade


def test_duplicates_in_buffer_and_after_release_are_counted_once() -> None:
    x = _signal(20)
    order = list(range(20))
    order.insert(6, 5)   # duplicate right after the original (already released)
    order.insert(15, 14)
    jb = JitterBuffer()
    frames, _ = _run(jb, _packets(x), [0, 1, 0, *order[2:]])  # packet 0 duplicated during prefill
    np.testing.assert_array_equal(_joined(frames), _decoded(x))
    assert jb.counters.duplicates == 3 and jb.counters.late == 0 and jb.counters.played == 20


@pytest.mark.parametrize(("seq0", "ts0"), [(65530, 1000), (100, 2**32 - 800), (65533, 2**32 - 480)])
def test_sequence_and_timestamp_wraparound(seq0: int, ts0: int) -> None:
    x = _signal(30)
    order = list(range(30))
    order[4], order[6] = order[6], order[4]  # reorder across the wrap
    del order[8]                              # and lose one just after it
    jb = JitterBuffer()
    frames, _ = _run(jb, _packets(x, seq0=seq0, ts0=ts0), order)
    y, ref = _joined(frames), _decoded(x)
    assert len(y) == len(ref) and jb.counters.lost == 1 and jb.counters.late == 0
    np.testing.assert_array_equal(y[:8 * FRAME], ref[:8 * FRAME])
    np.testing.assert_array_equal(y[9 * FRAME:], ref[9 * FRAME:])
    assert frames[-1].timestamp == (ts0 + frames[-1].offset) & 0xFFFFFFFF
    assert jb.counters.resets == 0


def test_first_packet_reordered_does_not_become_late() -> None:
    x = _signal(10)
    jb = JitterBuffer()
    frames, _ = _run(jb, _packets(x), [1, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(_joined(frames), _decoded(x))
    assert jb.counters.late == 0 and frames[0].timestamp == 5000


def test_talkspurt_gap_without_loss_is_filled_with_silence() -> None:
    x = _signal(10)
    pk = _packets(x[:5 * FRAME]) + _packets(x[5 * FRAME:], seq0=1005, ts0=5000 + 5 * FRAME + 4000)  # 0.5 s gap
    jb = JitterBuffer()
    frames, _ = _run(jb, pk, list(range(10)))
    y = _joined(frames)
    assert len(y) == 10 * FRAME + 4000
    assert not y[5 * FRAME:5 * FRAME + 4000].any()
    assert jb.counters.silence == 4000 and jb.counters.lost == 0 and jb.counters.concealed == 0


def test_ssrc_change_resets_the_stream_and_keeps_going() -> None:
    x = _signal(40)
    first = _packets(x[:20 * FRAME], ssrc=1)
    second = _packets(x[20 * FRAME:], ssrc=2, seq0=7, ts0=99)
    jb = JitterBuffer()
    frames, rejected = _run(jb, first + second, list(range(40)))
    assert rejected == []
    assert [f.segment for f in frames if f.new_segment] == [0, 1]
    assert {f.ssrc for f in frames if f.segment == 1} == {2}
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), _decoded(x))
    assert jb.counters.resets == 1 and jb.counters.bad == {"ssrc_change": 1}


def test_single_foreign_packet_is_rejected_not_a_reset() -> None:
    x = _signal(20)
    pk = _packets(x)
    intruder = _packets(x[:FRAME], ssrc=0xBAD, seq0=3)[0]
    jb = JitterBuffer()
    frames, rejected = [], []
    for k, p in enumerate(pk[:10] + [intruder] + pk[10:]):
        f, r = jb.push(p, k * DT)
        frames += f
        rejected += r
    frames += jb.flush(10.0, final=True)[0]
    assert [e.reason for e in rejected] == ["ssrc_change"] and rejected[0].packet.ssrc == 0xBAD
    np.testing.assert_array_equal(_joined(frames), _decoded(x))
    assert jb.counters.resets == 0 and jb.counters.bad == {"ssrc_change": 1}


def test_huge_timestamp_jump_resets_but_a_corrupt_one_is_rejected() -> None:
    x = _signal(30)
    pk = _packets(x[:10 * FRAME])
    corrupt = _packets(x[10 * FRAME:11 * FRAME], seq0=1010, ts0=5000 + 10 * FRAME + 8000 * 3600)[0]
    pk += [corrupt] + _packets(x[11 * FRAME:20 * FRAME], seq0=1011, ts0=5000 + 11 * FRAME)
    pk += _packets(x[20 * FRAME:], seq0=1020, ts0=5000 + 20 * FRAME + 8000 * 60)  # sender clock jumps 60 s
    jb = JitterBuffer(JitterConfig(max_ts_jump_s=10.0))
    frames, rejected = _run(jb, pk, list(range(len(pk))))
    assert [e.reason for e in rejected] == ["ts_jump"]
    assert jb.counters.resets == 1 and jb.counters.bad == {"ts_jump": 2}
    assert [f.segment for f in frames if f.new_segment] == [0, 1]
    seg0 = np.concatenate([f.samples for f in frames if f.segment == 0])
    assert len(seg0) == 20 * FRAME  # the corrupt packet's slot was concealed, no hour of silence
    assert jb.counters.lost == 1 and jb.counters.silence == 0


def test_sequence_jump_resets() -> None:
    x = _signal(20)
    pk = _packets(x[:10 * FRAME]) + _packets(x[10 * FRAME:], seq0=1010 + 20000, ts0=5000 + 10 * FRAME)
    jb = JitterBuffer()
    frames, _ = _run(jb, pk, list(range(20)))
    assert jb.counters.resets == 1 and jb.counters.bad == {"seq_jump": 1}
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), _decoded(x))


def test_tick_releases_audio_behind_a_hole_only_after_latency() -> None:
    x = _signal(10)
    pk = _packets(x)
    jb = JitterBuffer(JitterConfig(latency_s=0.06))
    for k in range(5):
        jb.push(pk[k], k * DT)
    f, _ = jb.push(pk[6], 0.12)  # 5 is missing; stream then stalls
    assert f == []
    assert jb.flush(0.17)[0] == []        # 50 ms after packet 6 arrived: still waiting for 5
    f, _ = jb.flush(0.19)                 # 70 ms: give up on 5
    assert len(f) == 1 and len(f[0].samples) == 2 * FRAME and f[0].offset == 5 * FRAME
    assert jb.counters.lost == 1
    late, _ = jb.push(pk[5], 0.2)
    assert late == [] and jb.counters.late == 1


def test_buffer_is_bounded() -> None:
    x = _signal(12)
    pk = _packets(x)
    jb = JitterBuffer(JitterConfig(latency_s=10.0, max_packets=4))
    for k in range(1, 12):  # packet 0 never comes; everything arrives at once
        jb.push(pk[k], 0.0)
        assert jb.buffered < 4
    assert jb.counters.played + jb.buffered == 11


def test_pcma_and_pcmu_mixed_in_one_stream() -> None:
    x = _signal(10)
    pk = _packets(x[:5 * FRAME], pt=8) + _packets(x[5 * FRAME:], pt=0, seq0=1005, ts0=5000 + 5 * FRAME)
    frames, _ = _run(JitterBuffer(), pk, list(range(10)))
    ref = np.concatenate([_decoded(x[:5 * FRAME], pt=8), _decoded(x[5 * FRAME:], pt=0)])
    np.testing.assert_array_equal(_joined(frames), ref)


# ---------------------------------------------------------------------------- LegDecoder

def _decode_leg(dec: LegDecoder, wire: list[bytes], order: list[int], t0: float = 0.0) -> tuple[list, list]:
    chunks, rejected = [], []
    for k, i in enumerate(order):
        res = dec.push(wire[i], t0 + k * DT)
        chunks += res.chunks
        rejected += res.rejected
    chunks += dec.flush(t0 + 1e6, final=True)
    return chunks, rejected


def test_leg_decoder_output_equals_one_shot_resampling() -> None:
    x = _signal(50)
    dec = LegDecoder("conv1", "caller")
    chunks, rejected = _decode_leg(dec, _wire(x), list(range(50)))
    assert rejected == []
    y = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(y, resample_8k_to_16k(_decoded(x)), atol=1e-6)
    assert all(c.samples.dtype == np.float32 and c.conversation == "conv1" and c.leg == "caller" for c in chunks)
    assert chunks[0].start_s == 0.0
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_s == pytest.approx(a.end_s)
    assert chunks[-1].end_s == pytest.approx(len(x) / 8000)
    assert dec.counters.played == 50


def test_leg_decoder_counts_and_returns_bad_packets_without_raising() -> None:
    x = _signal(10)
    wire = _wire(x)
    junk = [b"", b"\x00" * 30, build_rtp(b"\x00" * 160, payload_type=96, sequence=1, timestamp=1, ssrc=1)]
    dec = LegDecoder("c", "l")
    chunks, rejected = _decode_leg(dec, wire[:5] + junk + wire[5:], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    assert [e.reason for e in rejected] == ["truncated", "bad_version", "unknown_payload_type"]
    assert dec.counters.bad == {"truncated": 1, "bad_version": 1, "unknown_payload_type": 1}
    assert dec.counters.packets == 13 and dec.counters.played == 10
    assert sum(len(c.samples) for c in chunks) == 2 * len(x)


def test_leg_origin_from_ntp_extension_aligns_legs() -> None:
    x = _signal(20)
    a = LegDecoder("c", "a")
    b = LegDecoder("c", "b")
    ca, _ = _decode_leg(a, _wire(x, ntp0=1_700_000_000.0, ssrc=1), list(range(20)), t0=50.0)
    cb, _ = _decode_leg(b, _wire(x, ntp0=1_700_000_001.5, ssrc=2, ts0=77), list(range(20)), t0=50.0)
    assert ca[0].origin_s == pytest.approx(1_700_000_000.0, abs=1e-6)
    assert cb[0].origin_s - ca[0].origin_s == pytest.approx(1.5, abs=1e-6)


def test_leg_origin_falls_back_to_arrival_and_resets_keep_time_monotonic() -> None:
    x = _signal(40)
    wire = _wire(x[:20 * FRAME], ssrc=1) + _wire(x[20 * FRAME:], ssrc=2, seq0=9, ts0=1)
    order = list(range(40))
    dec = LegDecoder("c", "l")
    chunks, _ = [], []
    for k, i in enumerate(order):
        arrival = 100.0 + k * DT + (2.0 if i >= 20 else 0.0)  # second stream starts after a 2 s pause
        chunks += dec.push(wire[i], arrival).chunks
    chunks += dec.flush(1e6, final=True)
    assert dec.origin_s == pytest.approx(100.0)
    seg1 = [c for c in chunks if c.segment == 1]
    assert seg1 and seg1[0].ssrc == 2
    assert seg1[0].start_s == pytest.approx(20 * DT + 2.0)  # placed by arrival, after the pause
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_s >= a.end_s - 1e-9


def test_leg_state_is_small() -> None:
    x = _signal(6)
    wire = _wire(x)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    decoders = []
    for i in range(200):
        dec = LegDecoder(f"c{i}", "l")
        for k, w in enumerate(wire):
            dec.push(w, k * DT)
        decoders.append(dec)
    per_leg = (tracemalloc.get_traced_memory()[0] - before) / len(decoders)
    tracemalloc.stop()
    assert all(d.counters.played >= 2 for d in decoders)
    assert per_leg < 8 * 1024, per_leg


def test_sample_rate() -> None:
    assert SAMPLE_RATE == 16000
