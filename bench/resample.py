"""The streaming 8 -> 16 kHz resampler against soxr's: ``python -m bench.resample --json``.

Both run as the speech path runs them: one call per 20 ms RTP packet (160 samples at 8 kHz),
float input in [-1, 1]. Figures:

- ``snr_db[f]``: a full-scale tone of ``f`` Hz through each, against the exact 16 kHz tone
  (aligned by the resampler's own delay, first and last 50 ms left out); the telephone band.
- ``image_db``: energy above 4.6 kHz (the image band of 8 kHz audio) relative to the signal,
  for a 3.4 kHz tone: how much of a spurious image a resampler leaves.
- ``held_back_ms``: streaming latency - the output still owed after 1 s fed in packets
  (twice the input samples minus the output samples returned so far), in ms of audio;
- ``delay_ms``: how far the returned output lags the exact signal (cross-correlation on noise).
- ``us_per_packet``: mean wall time of one 160-sample call over ``--seconds`` of audio (best of 3).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import soxr

from inference.resample import StreamResampler

IN_RATE, OUT_RATE, PACKET = 8000, 16000, 160
TONES_HZ = (300.0, 1000.0, 2000.0, 3000.0, 3400.0)


def _ours() -> Callable[[np.ndarray, bool], np.ndarray]:
    r = StreamResampler()

    def step(x: np.ndarray, last: bool) -> np.ndarray:
        y = r.process(x)
        return np.concatenate((y, r.flush())) if last else y

    return step


def _soxr(quality: str) -> Callable[[], Callable[[np.ndarray, bool], np.ndarray]]:
    def make() -> Callable[[np.ndarray, bool], np.ndarray]:
        r = soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="float32", quality=quality)

        def step(x: np.ndarray, last: bool) -> np.ndarray:
            return r.resample_chunk(x.astype(np.float32), last=last)

        return step

    return make


def _stream(make: Callable[[], Callable[[np.ndarray, bool], np.ndarray]], x: np.ndarray) -> np.ndarray:
    step = make()
    chunks = [step(x[i:i + PACKET], i + PACKET >= len(x)) for i in range(0, len(x), PACKET)]
    return np.concatenate(chunks).astype(np.float64)


def _delay(y: np.ndarray, ref: np.ndarray) -> int:
    n = min(len(y), len(ref)) - 400
    scores = [float(np.dot(y[d:d + n], ref[:n])) for d in range(0, 400)]
    return int(np.argmax(scores))


def latency(make: Callable[[], Callable[[np.ndarray, bool], np.ndarray]]) -> dict[str, float]:
    """Held-back output after 1 s in packets, and the lag of the output (white noise, band-limited by
    the resampler itself: compared with the same noise through :func:`scipy.signal.resample_poly`)."""
    from scipy.signal import resample_poly

    rng = np.random.default_rng(1)
    x = 0.3 * rng.standard_normal(IN_RATE)
    step = make()
    returned = sum(len(step(x[i:i + PACKET], False)) for i in range(0, len(x), PACKET))
    ref = resample_poly(x, 2, 1)
    y = _stream(make, x)
    return {"held_back_ms": round(1000 * (2 * len(x) - returned) / OUT_RATE, 2),
            "delay_ms": round(1000 * _delay(y, ref) / OUT_RATE, 2)}


def accuracy(make: Callable[[], Callable[[np.ndarray, bool], np.ndarray]]) -> dict[str, object]:
    seconds = 1.0
    t_in = np.arange(int(IN_RATE * seconds)) / IN_RATE
    t_out = np.arange(int(OUT_RATE * seconds)) / OUT_RATE
    snr: dict[str, float] = {}
    image_db = 0.0
    for f in TONES_HZ:
        x = 0.9 * np.sin(2 * np.pi * f * t_in)
        ref = 0.9 * np.sin(2 * np.pi * f * t_out)
        y = _stream(make, x)
        d = _delay(y, ref)  # a whole number of periods off is the same tone: the SNR holds
        edge = OUT_RATE // 20
        a, b = y[d + edge:d + len(ref) - edge], ref[edge:len(ref) - edge]
        n = min(len(a), len(b))
        err = a[:n] - b[:n]
        snr[str(int(f))] = round(10 * np.log10(np.sum(b[:n] ** 2) / max(np.sum(err ** 2), 1e-30)), 1)
        if f == 3400.0:
            seg = a[:n] * np.hanning(n)
            spec = np.abs(np.fft.rfft(seg)) ** 2
            freqs = np.fft.rfftfreq(n, 1 / OUT_RATE)
            image_db = round(10 * np.log10(max(spec[freqs > 4600].sum(), 1e-30) / spec[freqs <= 4000].sum()), 1)
    return {"snr_db": snr, "image_db": image_db, **latency(make)}


def speed(make: Callable[[], Callable[[np.ndarray, bool], np.ndarray]], seconds: float) -> float:
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(int(IN_RATE * seconds))).clip(-1, 1)
    packets = [x[i:i + PACKET] for i in range(0, len(x) - PACKET + 1, PACKET)]
    best = float("inf")
    for _ in range(3):
        step = make()
        t0 = time.perf_counter()
        for p in packets:
            step(p, False)
        best = min(best, (time.perf_counter() - t0) / len(packets))
    return round(best * 1e6, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per speed run (default 60)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    candidates = {"inference.resample": _ours, "soxr HQ": _soxr("HQ"), "soxr VHQ": _soxr("VHQ"),
                  "soxr MQ": _soxr("MQ")}
    out: dict[str, object] = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                              "soxr": soxr.__version__, "packet_samples": PACKET, "seconds": args.seconds}
    for name, make in candidates.items():
        out[name] = {**accuracy(make), "us_per_packet": speed(make, args.seconds)}
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
