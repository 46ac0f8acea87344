"""8 kHz -> 16 kHz: a streaming 2x half-band polyphase upsampler with carried state.

The filter is a 95-tap Kaiser-windowed half-band (flat within 0.01 dB to 3.4 kHz, images
above 4.6 kHz below -70 dB). Even output samples are the input samples themselves; odd ones
are interpolated from 24 inputs either side, so a stream holds back 24 input samples (3 ms)
and keeps 47 samples of state. Output sample ``2*k`` is input sample ``k``: no delay to undo.

Why not soxr's streaming resampler (``python -m bench.resample``, 160-sample packets, 2-core
machine shared with other jobs, 2026-12-06): soxr is more accurate (tone SNR >= 131 dB vs >= 78 dB
here, images -143 dB vs -89 dB, at HQ) and about as fast (16-29 vs 28-42 us per packet, both
noise next to a 20 ms packet), but it holds back 26 ms (MQ) to 66 ms (HQ) of output against 3 ms
here: latency on every partial and final, for accuracy far beyond what G.711 audio carries
(about 38 dB SNR).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import upfirdn
from scipy.signal.windows import kaiser

__all__ = ["OUT_RATE", "HALF_TAPS", "HALFBAND", "StreamResampler", "resample_8k_to_16k"]

OUT_RATE = 16000
HALF_TAPS = 24  # input samples either side of an interpolated output
_BETA = 7.0


def _halfband() -> np.ndarray:
    n = 4 * HALF_TAPS - 1
    m = np.arange(n) - (2 * HALF_TAPS - 1)
    h = 0.5 * np.sinc(0.5 * m) * kaiser(n, _BETA)
    h[m % 2 == 0] = 0.0
    h[2 * HALF_TAPS - 1] = 0.5
    odd = h[m % 2 != 0]
    h[m % 2 != 0] = odd * (0.5 / odd.sum())  # each phase has unit DC gain
    return 2.0 * h  # upsampling by 2 halves the energy per sample: gain 2


HALFBAND: np.ndarray = _halfband()
HALFBAND.flags.writeable = False
_ODD_PHASE = np.ascontiguousarray(HALFBAND[0::2][::-1])  # 2*HALF_TAPS taps, correlate order


def _as_float(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.dtype == np.int16:
        return x.astype(np.float64) * (1.0 / 32768.0)
    return x.astype(np.float64, copy=False)


class StreamResampler:
    """Streaming 8 -> 16 kHz. ``process`` returns what is ready; ``flush`` ends the stream
    (emits the held-back tail, then the resampler is fresh again)."""

    __slots__ = ("_ctx",)

    _CTX = 2 * HALF_TAPS - 1

    def __init__(self) -> None:
        self._ctx = np.zeros(HALF_TAPS - 1, dtype=np.float64)

    @property
    def pending(self) -> int:
        """Input samples received but not yet turned into output."""
        return len(self._ctx) - (HALF_TAPS - 1)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed int16 (scaled by 1/32768) or float samples at 8 kHz; get float32 16 kHz in [-1, 1]."""
        x = _as_float(samples)
        if x.ndim != 1:
            raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
        buf = np.concatenate((self._ctx, x))
        count = len(buf) - self._CTX
        if count <= 0:
            self._ctx = buf
            return np.zeros(0, dtype=np.float32)
        out = np.empty(2 * count, dtype=np.float64)
        out[0::2] = buf[HALF_TAPS - 1:HALF_TAPS - 1 + count]
        out[1::2] = np.correlate(buf, _ODD_PHASE, mode="valid")
        self._ctx = buf[count:].copy()
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def flush(self) -> np.ndarray:
        """End of stream: the output for the held-back samples (zeros follow the signal)."""
        out = self.process(np.zeros(HALF_TAPS, dtype=np.float64))
        self.reset()
        return out

    def reset(self) -> None:
        """Forget the stream; the next sample starts a new one."""
        self._ctx = np.zeros(HALF_TAPS - 1, dtype=np.float64)


def resample_8k_to_16k(samples: np.ndarray) -> np.ndarray:
    """One-shot 8 -> 16 kHz with the same filter (``len(out) == 2 * len(samples)``)."""
    x = _as_float(samples)
    y = upfirdn(HALFBAND, x, up=2)
    delay = 2 * HALF_TAPS - 1
    return np.clip(y[delay:delay + 2 * len(x)], -1.0, 1.0).astype(np.float32)
