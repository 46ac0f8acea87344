"""8 -> 16 kHz resampler: streaming equals one-shot; the filter passes speech and rejects images."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from inference.resample import HALF_TAPS, StreamResampler, resample_8k_to_16k


def _stream(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    r = StreamResampler()
    out, i = [], 0
    for n in sizes:
        out.append(r.process(x[i:i + n]))
        i += n
    out.append(r.process(x[i:]))
    out.append(r.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_one_shot_for_any_chunking(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(12000) * 4000).clip(-32768, 32767).astype(np.int16)
    sizes = [int(s) for s in rng.integers(0, 400, size=60)]  # includes 0- and 1-sample chunks
    one = resample_8k_to_16k(x)
    streamed = _stream(x, sizes)
    assert one.dtype == streamed.dtype == np.float32
    assert len(one) == len(streamed) == 2 * len(x)
    np.testing.assert_allclose(streamed, one, atol=1e-6)


def test_even_outputs_are_the_inputs() -> None:
    x = np.random.default_rng(5).integers(-20000, 20000, 1000).astype(np.int16)
    y = resample_8k_to_16k(x)
    np.testing.assert_allclose(y[0::2], x / 32768.0, atol=1e-7)


def test_held_back_samples_and_flush() -> None:
    r = StreamResampler()
    assert len(r.process(np.ones(HALF_TAPS, dtype=np.int16))) == 0  # waits for look-ahead
    assert r.pending == HALF_TAPS
    assert len(r.process(np.ones(160, dtype=np.int16))) == 320
    assert len(r.flush()) == 2 * HALF_TAPS
    assert r.pending == 0


def _tone_gain(freq: float) -> float:
    t = np.arange(8000) / 8000
    y = resample_8k_to_16k(0.5 * np.sin(2 * np.pi * freq * t))[2000:-2000]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    passband = spectrum[np.abs(freqs - freq) < 50].max()
    image = spectrum[np.abs(freqs - (8000 - freq)) < 50].max()
    return float(20 * np.log10(image / passband))


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 3400.0])
def test_images_are_rejected(freq: float) -> None:
    assert _tone_gain(freq) < -60


def test_sine_is_reconstructed_and_matches_soxr() -> None:
    t8 = np.arange(8000) / 8000
    t16 = np.arange(16000) / 16000
    x = 0.5 * np.sin(2 * np.pi * 1000 * t8) + 0.3 * np.sin(2 * np.pi * 2500 * t8)
    ref = 0.5 * np.sin(2 * np.pi * 1000 * t16) + 0.3 * np.sin(2 * np.pi * 2500 * t16)
    y = resample_8k_to_16k(x)
    assert np.abs(y - ref)[100:-100].max() < 1e-3
    hq = soxr.resample(x.astype(np.float32), 8000, 16000, quality="VHQ")
    assert np.abs(y - hq)[100:-100].max() < 1e-3


def test_output_is_clipped_to_unit_range() -> None:
    x = np.tile(np.array([32767, -32768], dtype=np.int16), 500)  # Nyquist square wave overshoots
    y = resample_8k_to_16k(x)
    assert y.max() <= 1.0 and y.min() >= -1.0


def test_rejects_multichannel() -> None:
    with pytest.raises(ValueError):
        StreamResampler().process(np.zeros((10, 2)))
