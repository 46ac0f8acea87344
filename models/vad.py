"""Streaming voice activity detection with Silero VAD (the TorchScript model inside ``silero-vad``).

One :class:`SileroVad` holds the network; it keeps no per-stream state, so one instance
serves every stream and every thread. Each audio stream owns a :class:`VadStream` with its
recurrent state, its 64-sample context and its hysteresis: speech starts when a 512-sample
window (32 ms at 16 kHz) scores at least ``threshold`` and ends after ``min_silence_s`` of
windows below ``threshold - 0.15``. A start is padded back by ``pre_pad_s`` (Silero scores a soft
onset late), never past the previous speech's end. Events carry absolute sample positions on the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from common.speech_settings import VadConfig

__all__ = ["SAMPLE_RATE", "WINDOW", "VadConfig", "VadEvent", "SileroVad", "VadStream"]

SAMPLE_RATE = 16000
WINDOW = 512
_CONTEXT = 64


@dataclass(frozen=True, slots=True)
class VadEvent:
    """Speech ``start`` or ``end`` at absolute sample ``sample`` of the stream (padding included)."""

    kind: Literal["start", "end"]
    sample: int

    @property
    def seconds(self) -> float:
        return self.sample / SAMPLE_RATE


class SileroVad:
    """The Silero VAD network (16 kHz), stateless across calls: state is passed in and out."""

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        wrapper = load_silero_vad(onnx=False)
        # The scripted wrapper keeps one hidden state; its inner 16 kHz network takes the
        # state as an argument, which lets many streams share one set of weights.
        self._net = wrapper._model
        self._net.eval()

    def warm_up(self) -> None:
        """Score a few windows of noise, so the network's first-call set-up is done before traffic."""
        windows = (np.random.default_rng(0).standard_normal((4, _CONTEXT + WINDOW)) * 0.01).astype(np.float32)
        self.probs(windows, torch.zeros((2, 1, 128), dtype=torch.float32))

    def new_stream(self, config: VadConfig | None = None) -> VadStream:
        return VadStream(self, config or VadConfig())

    def probs(self, windows: np.ndarray, state: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Speech probability of each row of ``windows`` (n, 64 + 512), run in sequence."""
        out = np.empty(len(windows), dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(windows)
            for i in range(len(windows)):
                p, state = self._net(x[i : i + 1], state)
                out[i] = float(p)
        return out, state


class VadStream:
    """Per-stream VAD: feed 16 kHz float32 samples, get start/end events. Not thread-safe."""

    def __init__(self, vad: SileroVad, config: VadConfig) -> None:
        self._vad = vad
        self.config = config
        self._state = torch.zeros((2, 1, 128), dtype=torch.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.position = 0  # samples consumed into complete windows
        self.in_speech = False
        self.speech_start: int | None = None
        self._temp_end: int | None = None
        self._last_end = 0  # end (padding included) of the last speech: a start never reaches back past it
        self.last_prob = 0.0

    @property
    def network(self) -> SileroVad:
        """The network this stream runs (shared by every stream of one :class:`SileroVad`)."""
        return self._vad

    @property
    def received(self) -> int:
        """Samples received so far (including those waiting for a full window)."""
        return self.position + len(self._pending)

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Consume samples; return the events decided by the complete windows among them."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = len(data) // WINDOW
        self._pending = data[n * WINDOW :]
        if n == 0:
            return []
        frames = data[: n * WINDOW].reshape(n, WINDOW)
        ctx = np.concatenate([self._context[None, :], frames[:-1, -_CONTEXT:]], axis=0)
        self._context = frames[-1, -_CONTEXT:].copy()
        probs, self._state = self._vad.probs(np.ascontiguousarray(np.concatenate([ctx, frames], axis=1)),
                                             self._state)
        events: list[VadEvent] = []
        for p in probs:
            events.extend(self._decide(float(p)))
            self.position += WINDOW
        return events

    def _decide(self, p: float) -> list[VadEvent]:
        cfg = self.config
        self.last_prob = p
        start_of_window = self.position
        end_of_window = self.position + WINDOW
        pad = int(cfg.speech_pad_s * SAMPLE_RATE)
        if p >= cfg.threshold:
            self._temp_end = None
            if not self.in_speech:
                self.in_speech = True
                pre = int(cfg.pre_pad_s * SAMPLE_RATE)
                self.speech_start = max(0, self._last_end, start_of_window - pre)
                return [VadEvent("start", self.speech_start)]
            if self.speech_start is not None and end_of_window - self.speech_start >= cfg.max_speech_s * SAMPLE_RATE:
                # Too long without a pause: cut here so that results keep flowing.
                self.speech_start = self._last_end = end_of_window
                return [VadEvent("end", end_of_window), VadEvent("start", end_of_window)]
            return []
        if self.in_speech and p < cfg.off_threshold:
            if self._temp_end is None:
                self._temp_end = start_of_window
            if end_of_window - self._temp_end >= cfg.min_silence_s * SAMPLE_RATE:
                end = min(self._temp_end + pad, end_of_window)
                self._last_end = end
                self.in_speech = False
                self.speech_start = None
                self._temp_end = None
                return [VadEvent("end", end)]
        return []

    def end(self) -> list[VadEvent]:
        """End of stream: close speech in progress at the last sample received."""
        if not self.in_speech:
            return []
        end = self.received
        if self._temp_end is not None:
            end = min(self._temp_end + int(self.config.speech_pad_s * SAMPLE_RATE), end)
        self._last_end = end
        self.in_speech = False
        self.speech_start = None
        self._temp_end = None
        return [VadEvent("end", end)]

    def skip(self, n_samples: int) -> list[VadEvent]:
        """A discontinuity of ``n_samples`` (lost audio): close speech, reset state, move on."""
        events = self.end()
        self.position = self.received + n_samples
        self._pending = np.zeros(0, dtype=np.float32)
        self._state = torch.zeros_like(self._state)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        return events
