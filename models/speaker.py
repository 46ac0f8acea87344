"""Speaker embeddings with Resemblyzer's GE2E ``VoiceEncoder`` (weights inside the wheel).

Embeddings are 256-d, non-negative and L2-normalised, so the cosine similarity of two is
their dot product. The encoder works on 1.6 s windows; :meth:`SpeakerEncoder.embed` averages
the windows of a segment, :meth:`SpeakerEncoder.embed_windows` returns them one by one (to
follow a speaker change inside a long segment). Inference keeps no state between calls, so
one encoder may serve several threads.

``resemblyzer.audio`` imports ``webrtcvad``, which imports ``pkg_resources``: that module is
provided by ``setuptools<81`` (pinned in pyproject).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["SAMPLE_RATE", "WINDOW_S", "SpeakerEncoder", "WindowEmbeddings", "cosine"]

SAMPLE_RATE = 16000
WINDOW_S = 1.6  # Resemblyzer's partial-utterance length (160 mel frames of 10 ms)


@dataclass(frozen=True, slots=True)
class WindowEmbeddings:
    """Embeddings of consecutive windows: row i covers ``[starts_s[i], starts_s[i] + WINDOW_S)``."""

    embeddings: np.ndarray  # (n, 256) float32
    starts_s: np.ndarray  # (n,) float64, seconds from the segment start


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class SpeakerEncoder:
    """Resemblyzer's voice encoder on ``device`` ("cpu", "cuda" or None for CUDA when present)."""

    name = "resemblyzer-ge2e"
    version = "0.1.4"

    def __init__(self, device: str | None = None) -> None:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation from webrtcvad
            from resemblyzer import VoiceEncoder
            from resemblyzer.audio import normalize_volume
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._normalize = normalize_volume
        self._encoder = VoiceEncoder(device=device, verbose=False)
        self._encoder.eval()
        self.device = device

    def _prepare(self, samples: np.ndarray) -> np.ndarray:
        wav = np.nan_to_num(np.asarray(samples, dtype=np.float32))
        if not len(wav) or float(np.sqrt(np.mean(wav ** 2))) < 1e-6:
            return wav  # digital silence: nothing to normalise (and no division by zero)
        # Same loudness normalisation as resemblyzer.preprocess_wav; silences are left in,
        # the segment comes from a VAD already.
        return self._normalize(wav, -30, increase_only=True).astype(np.float32)

    def warm_up(self) -> None:
        """One embedding of 2 s of noise: the LSTM's first call in a process costs about 2 s of
        set-up that would otherwise land on the first speaker label."""
        self.embed((np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE) * 0.01).astype(np.float32))

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """One L2-normalised embedding of a 16 kHz segment (mean of its 1.6 s windows)."""
        import torch

        with torch.inference_mode():
            return self._encoder.embed_utterance(self._prepare(samples)).astype(np.float32)

    def embed_windows(self, samples: np.ndarray, rate: float = 1.3) -> WindowEmbeddings:
        """Per-window embeddings of a segment; ``rate`` windows per second (>= 0.625)."""
        import torch

        wav = self._prepare(samples)
        with torch.inference_mode():
            _, partials, slices = self._encoder.embed_utterance(wav, return_partials=True, rate=rate)
        starts = np.array([s.start / SAMPLE_RATE for s in slices], dtype=np.float64)
        return WindowEmbeddings(embeddings=np.asarray(partials, dtype=np.float32), starts_s=starts)
