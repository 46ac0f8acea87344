"""Per-stream RTP jitter buffer: reorder, drop late/duplicate, conceal loss, survive resets.

Release is driven by the caller's clock, never by sleeping: :meth:`JitterBuffer.push` takes
the packet's arrival time and :meth:`JitterBuffer.flush` a current time. A packet missing
at the head of the buffer is waited for until more than ``latency_s`` of audio behind it
has arrived, or ``latency_s`` has passed since the first packet behind it arrived, or
``max_packets`` are buffered; then it is declared lost and its time concealed.

Sequence numbers (16 bit) and timestamps (32 bit) are unwrapped against the highest
sequence number seen. A packet that does not fit the stream (another SSRC, a timestamp
more than ``max_ts_jump_s`` away, a sequence jump) is held as a candidate: if the next
packet follows it, the stream is reset to it (``resets`` and ``bad[reason]`` counted);
otherwise it is rejected as an :class:`~topics.rtp.RtpError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.speech_settings import JitterConfig
from topics import g711
from topics.rtp import CLOCK_RATE, PAYLOAD_TYPES, RtpError, RtpPacket

__all__ = ["JitterConfig", "StreamCounters", "PcmFrame", "JitterBuffer"]

_MASK64 = (1 << 64) - 1


def _s16(v: int) -> int:
    return ((v + 0x8000) & 0xFFFF) - 0x8000


def _s32(v: int) -> int:
    return ((v + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


@dataclass(slots=True)
class StreamCounters:
    """What happened to one stream's packets. Sample counts are at 8 kHz.

    ``packets``: every packet offered (including unparseable ones); ``played``: packets
    whose audio was released; ``lost``: sequence numbers given up on; ``concealed``:
    samples synthesised for lost packets; ``silence``: samples of silence filled into
    timestamp gaps without loss (talkspurt gaps); ``bad``: counts by reason code."""

    packets: int = 0
    played: int = 0
    lost: int = 0
    concealed: int = 0
    silence: int = 0
    late: int = 0
    duplicates: int = 0
    reordered: int = 0
    resets: int = 0
    bad: dict[str, int] = field(default_factory=dict)

    def count_bad(self, reason: str) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class PcmFrame:
    """Contiguous decoded 8 kHz audio of one stream segment, in order.

    ``timestamp``: RTP timestamp of ``samples[0]``; ``offset``: samples since the segment's
    first sample; ``new_segment``: this frame starts a segment (first packet or a reset);
    ``head``/``head_arrival_s``: the first received packet in this frame and its arrival
    (with ``new_segment`` it starts at ``samples[0]``)."""

    ssrc: int
    segment: int
    new_segment: bool
    timestamp: int
    offset: int
    samples: np.ndarray
    head: RtpPacket
    head_arrival_s: float


class JitterBuffer:
    """Jitter buffer of one RTP stream (one SSRC at a time) of G.711 audio."""

    __slots__ = ("cfg", "counters", "_ssrc", "_segment", "_started", "_max_seq", "_max_ts",
                 "_next_seq", "_next_ts", "_seg_ts0", "_buf", "_mask", "_last", "_loss_pending",
                 "_cand", "_latency", "_max_jump", "_fade")

    def __init__(self, config: JitterConfig | None = None, counters: StreamCounters | None = None) -> None:
        self.cfg = config or JitterConfig()
        self.counters = counters if counters is not None else StreamCounters()
        self._latency = round(self.cfg.latency_s * CLOCK_RATE)
        self._max_jump = round(self.cfg.max_ts_jump_s * CLOCK_RATE)
        self._fade = max(1, round(self.cfg.fade_s * CLOCK_RATE))
        self._ssrc: int | None = None
        self._segment = -1
        self._cand: tuple[RtpPacket, float, str] | None = None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._started = False
        self._max_seq = 0
        self._max_ts = 0
        self._next_seq = 0
        self._next_ts = 0
        self._seg_ts0 = 0
        self._buf: dict[int, tuple[int, RtpPacket, float]] = {}
        self._mask = 0
        self._last: np.ndarray | None = None
        self._loss_pending = False

    @property
    def ssrc(self) -> int | None:
        """SSRC of the current stream (None before the first packet)."""
        return self._ssrc

    @property
    def buffered(self) -> int:
        """Packets waiting in the buffer."""
        return len(self._buf)

    # ------------------------------------------------------------------ input

    def push(self, packet: RtpPacket, arrival_s: float) -> tuple[list[PcmFrame], list[RtpError]]:
        """Add one parsed packet; return the frames now releasable and any rejected packets."""
        if packet.payload_type not in PAYLOAD_TYPES:
            raise ValueError(f"payload type {packet.payload_type} is not G.711")
        self.counters.packets += 1
        if self._ssrc is None:
            self._start_segment(packet, arrival_s)
            return self._drain(arrival_s, force=False), []
        reason = self._misfit(packet)
        rejected: list[RtpError] = []
        if reason is None:
            if self._cand is not None:
                rejected.append(self._reject_candidate())
            self._insert(packet, arrival_s)
            return self._drain(arrival_s, force=False), rejected
        cand = self._cand
        if cand is not None and self._follows(cand[0], packet):
            self._cand = None
            frames = self._drain(arrival_s, force=True)
            self.counters.count_bad(cand[2])
            self.counters.resets += 1
            self._start_segment(cand[0], cand[1])
            self._insert(packet, arrival_s)
            return frames + self._drain(arrival_s, force=False), rejected
        if cand is not None:
            rejected.append(self._reject_candidate())
        self._cand = (packet, arrival_s, reason)
        return self._drain(arrival_s, force=False), rejected

    def flush(self, now_s: float, final: bool = False) -> tuple[list[PcmFrame], list[RtpError]]:
        """Release what waited long enough by ``now_s``; ``final`` releases everything buffered
        (concealing holes) and rejects a pending reset candidate."""
        rejected = [self._reject_candidate()] if final and self._cand is not None else []
        return self._drain(now_s, force=final), rejected

    def _misfit(self, p: RtpPacket) -> str | None:
        if p.ssrc != self._ssrc:
            return "ssrc_change"
        d_seq = _s16(p.sequence - self._max_seq)
        if d_seq > self.cfg.max_seq_jump or d_seq < -self.cfg.max_misorder:
            return "seq_jump"
        if abs(_s32(p.timestamp - self._max_ts)) > self._max_jump:
            return "ts_jump"
        return None

    def _follows(self, first: RtpPacket, p: RtpPacket) -> bool:
        return (p.ssrc == first.ssrc
                and 0 < _s16(p.sequence - first.sequence) <= self.cfg.follow_window
                and abs(_s32(p.timestamp - first.timestamp)) <= self._max_jump)

    def _reject_candidate(self) -> RtpError:
        assert self._cand is not None
        p, _, reason = self._cand
        self._cand = None
        self.counters.count_bad(reason)
        err = RtpError(reason, f"ssrc {p.ssrc:#010x} seq {p.sequence} ts {p.timestamp} does not fit "
                               f"stream ssrc {self._ssrc:#010x} and no packet followed it")
        err.packet = p
        return err

    def _start_segment(self, p: RtpPacket, arrival_s: float) -> None:
        self._reset_stream()
        self._segment += 1
        self._ssrc = p.ssrc
        self._max_seq = p.sequence
        self._max_ts = p.timestamp
        self._buf[p.sequence] = (p.timestamp, p, arrival_s)

    def _insert(self, p: RtpPacket, arrival_s: float) -> None:
        seq = self._max_seq + _s16(p.sequence - self._max_seq)
        ts = self._max_ts + _s32(p.timestamp - self._max_ts)
        if self._started and seq < self._next_seq:
            back = self._next_seq - seq
            if back <= 64 and (self._mask >> (back - 1)) & 1:
                self.counters.duplicates += 1
            else:
                self.counters.late += 1
            return
        if seq in self._buf:
            self.counters.duplicates += 1
            return
        if seq < self._max_seq:
            self.counters.reordered += 1
        else:
            self._max_seq, self._max_ts = seq, ts
        self._buf[seq] = (ts, p, arrival_s)

    # ----------------------------------------------------------------- output

    def _give_up(self, now_s: float) -> bool:
        """True when the hole at the head of the buffer has been waited for long enough."""
        buf = self._buf
        if len(buf) >= self.cfg.max_packets:
            return True
        first_ts = min(e[0] for e in buf.values())
        horizon = max(e[0] + len(e[1].payload) for e in buf.values())
        if horizon - first_ts > self._latency:
            return True
        return now_s - min(e[2] for e in buf.values()) > self.cfg.latency_s

    def _drain(self, now_s: float, force: bool) -> list[PcmFrame]:
        pieces: list[np.ndarray] = []
        new_segment = False
        start_ts = self._next_ts
        head: tuple[RtpPacket, float] | None = None
        buf = self._buf
        while buf:
            if not self._started:
                if not (force or self._give_up(now_s)):
                    break
                first = min(buf)
                self._started = True
                self._next_seq = first
                self._next_ts = self._seg_ts0 = start_ts = buf[first][0]
                new_segment = True
            if self._next_seq not in buf:
                if not (force or self._give_up(now_s)):
                    break
                first = min(buf)
                lost = first - self._next_seq
                self.counters.lost += lost
                self._mask = (self._mask << lost) & _MASK64
                self._next_seq = first
                self._loss_pending = True
            ts, p, arrival = buf.pop(self._next_seq)
            self._next_seq += 1
            self._mask = ((self._mask << 1) | 1) & _MASK64
            self.counters.played += 1
            pcm = g711.decode(PAYLOAD_TYPES[p.payload_type], p.payload)
            gap = ts - self._next_ts
            if gap > 0:
                if self._loss_pending:
                    pieces.append(self._conceal(gap))
                    self.counters.concealed += gap
                else:
                    pieces.append(np.zeros(gap, dtype=np.int16))
                    self.counters.silence += gap
            elif gap < 0:
                self.counters.count_bad("ts_overlap")
                pcm = pcm[-gap:]
                if not len(pcm):
                    continue
            if head is None:
                head = (p, arrival)
            self._loss_pending = False
            pieces.append(pcm)
            self._last = pcm
            self._next_ts += max(gap, 0) + len(pcm)
        if not pieces or head is None:
            return []
        return [PcmFrame(
            ssrc=self._ssrc if self._ssrc is not None else 0,
            segment=self._segment,
            new_segment=new_segment,
            timestamp=start_ts & 0xFFFF_FFFF,
            offset=start_ts - self._seg_ts0,
            samples=np.concatenate(pieces) if len(pieces) > 1 else pieces[0],
            head=head[0],
            head_arrival_s=head[1],
        )]

    def _conceal(self, n: int) -> np.ndarray:
        """Repeat the last packet's audio with a linear fade to silence over ``fade_s``."""
        last = self._last
        if last is None or not len(last):
            return np.zeros(n, dtype=np.int16)
        k = min(n, self._fade)
        reps = np.resize(last, k).astype(np.float32)
        reps *= 1.0 - np.arange(1, k + 1, dtype=np.float32) / k
        out = np.zeros(n, dtype=np.int16)
        out[:k] = reps.astype(np.int16)
        return out
