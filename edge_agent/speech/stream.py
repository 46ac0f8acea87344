"""One call leg: raw RTP packets in, speaker-ready 16 kHz float32 PCM chunks out.

``LegDecoder.push(packet_bytes, arrival_s)`` parses, jitter-buffers, decodes and resamples;
bad packets are counted and handed back as :class:`~topics.rtp.RtpError` for the
caller to dead-letter, never raised.

Time: ``PcmChunk.start_s`` is the position of the chunk's first sample on the leg's RTP clock,
in seconds from the leg's first sample. ``PcmChunk.origin_s`` places that first sample on a
clock shared by all legs of the conversation: the RFC 6051 NTP-64 header extension of the
first packet when the sender includes it (as :mod:`devices.audio` does), else the arrival
time of that packet as given to ``push`` (pass e.g. ``time.time()``). Legs of one call align
on ``origin_s + start_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.speech.jitter import JitterBuffer, JitterConfig, PcmFrame, StreamCounters
from inference.resample import OUT_RATE, StreamResampler
from topics.rtp import CLOCK_RATE, NTP64_EXT_ID, RtpError, RtpPacket, ntp64_to_unix, one_byte_extensions, parse_rtp

__all__ = ["SAMPLE_RATE", "PcmChunk", "PushResult", "LegDecoder"]

SAMPLE_RATE = OUT_RATE


@dataclass(frozen=True, slots=True)
class PcmChunk:
    """Decoded audio of one leg: float32 mono at :data:`SAMPLE_RATE` in [-1, 1].

    ``segment`` counts stream resets on the leg (SSRC change, timestamp jump); ``origin_s``
    is the leg's first sample on the conversation's shared clock (see the module doc)."""

    conversation: str
    leg: str
    samples: np.ndarray
    start_s: float
    ssrc: int
    origin_s: float = 0.0
    segment: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one pushed packet produced: audio now ready, and packets rejected (to dead-letter)."""

    chunks: list[PcmChunk]
    rejected: list[RtpError]


class LegDecoder:
    """Decoder of one leg (one topic) of one conversation. Small state: one jitter buffer
    (a few packets), 47 resampler samples, and the last packet's audio for concealment."""

    __slots__ = ("conversation", "leg", "ntp_ext_id", "_jitter", "_resampler", "_origin_s",
                 "_origin_ntp", "_segment", "_seg_start_s", "_seg_in", "_seg_out", "_ssrc")

    def __init__(self, conversation: str, leg: str, *, config: JitterConfig | None = None,
                 ntp_ext_id: int | None = NTP64_EXT_ID) -> None:
        self.conversation = conversation
        self.leg = leg
        self.ntp_ext_id = ntp_ext_id
        self._jitter = JitterBuffer(config)
        self._resampler = StreamResampler()
        self._origin_s: float | None = None
        self._origin_ntp = False
        self._segment = -1
        self._seg_start_s = 0.0
        self._seg_in = 0   # 8 kHz samples fed to the resampler in this segment
        self._seg_out = 0  # 16 kHz samples emitted in this segment
        self._ssrc = 0

    @property
    def counters(self) -> StreamCounters:
        """Packet counters of this leg (parse rejections included under ``bad``)."""
        return self._jitter.counters

    @property
    def origin_s(self) -> float | None:
        """The leg's first sample on the shared clock, once known."""
        return self._origin_s

    def push(self, packet_bytes: bytes, arrival_s: float) -> PushResult:
        """Feed one MQTT payload (one raw RTP packet) that arrived at ``arrival_s`` seconds."""
        try:
            packet = parse_rtp(packet_bytes)
        except RtpError as exc:
            self.counters.packets += 1
            self.counters.count_bad(exc.reason)
            return PushResult([], [exc])
        frames, rejected = self._jitter.push(packet, arrival_s)
        return PushResult(self._convert(frames), rejected)

    def flush(self, now_s: float, final: bool = False) -> list[PcmChunk]:
        """Release audio that waited long enough by ``now_s`` (call it on a timer).
        ``final`` ends the leg: everything buffered comes out, including the resampler tail
        (a pending reset candidate is dropped and counted under ``bad``)."""
        frames, _ = self._jitter.flush(now_s, final=final)
        chunks = self._convert(frames)
        if final and self._segment >= 0:
            chunks.extend(self._emit(self._resampler.flush()))
        return chunks

    def _ntp_s(self, packet: RtpPacket) -> float | None:
        if self.ntp_ext_id is None or packet.extension_profile is None:
            return None
        try:
            value = one_byte_extensions(packet).get(self.ntp_ext_id)
            return None if value is None else ntp64_to_unix(value)
        except RtpError as exc:
            self.counters.count_bad(exc.reason)
            return None

    def _start_segment(self, frame: PcmFrame) -> list[PcmChunk]:
        tail = self._emit(self._resampler.flush()) if self._segment >= 0 else []
        ntp = self._ntp_s(frame.head)
        if self._origin_s is None:
            self._origin_s = ntp if ntp is not None else frame.head_arrival_s
            self._origin_ntp = ntp is not None
            start = 0.0
        else:
            prev_end = self._seg_start_s + self._seg_in / CLOCK_RATE
            if ntp is not None and self._origin_ntp:
                start = ntp - self._origin_s
            elif ntp is None and not self._origin_ntp:
                start = frame.head_arrival_s - self._origin_s
            else:
                start = prev_end
            start = max(start, prev_end)
        self._segment = frame.segment
        self._seg_start_s = start
        self._seg_in = self._seg_out = 0
        return tail

    def _convert(self, frames: list[PcmFrame]) -> list[PcmChunk]:
        chunks: list[PcmChunk] = []
        for frame in frames:
            if frame.new_segment:
                chunks.extend(self._start_segment(frame))
            self._ssrc = frame.ssrc
            self._seg_in += len(frame.samples)
            chunks.extend(self._emit(self._resampler.process(frame.samples)))
        return chunks

    def _emit(self, samples: np.ndarray) -> list[PcmChunk]:
        if not len(samples):
            return []
        chunk = PcmChunk(
            conversation=self.conversation,
            leg=self.leg,
            samples=samples,
            start_s=self._seg_start_s + self._seg_out / SAMPLE_RATE,
            ssrc=self._ssrc,
            origin_s=self._origin_s if self._origin_s is not None else 0.0,
            segment=max(self._segment, 0),
        )
        self._seg_out += len(samples)
        return [chunk]
