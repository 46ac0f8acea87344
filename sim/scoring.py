"""Scoring: word error rate (the product's one WER, :func:`models.text.wer`) and diarization error rate."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.text import wer

__all__ = ["wer", "der"]


def der(
    reference: Iterable[tuple[str, float, float]],
    hypothesis: Iterable[tuple[str, float, float]],
    *,
    collar_s: float = 0.25,
    step_s: float = 0.01,
) -> float:
    """Diarization error rate of (speaker, start_s, end_s) turns.

    (missed speech + false alarm + speaker confusion) / reference speech, on a ``step_s``
    grid, with hypothesis labels mapped to reference labels one-to-one so as to minimise
    confusion. Frames within ``collar_s`` of a reference boundary are not scored.
    Overlapping speech counts one speaker per frame (the longest-talking one wins).
    """
    ref = [(s, a, b) for s, a, b in reference if b > a]
    hyp = [(s, a, b) for s, a, b in hypothesis if b > a]
    if not ref:
        return 0.0 if not hyp else 1.0
    end = max([b for _, _, b in ref] + [b for _, _, b in hyp])
    n = int(np.ceil(end / step_s)) + 1
    ref_labels = sorted({s for s, _, _ in ref})
    hyp_labels = sorted({s for s, _, _ in hyp})

    def grid(turns: list[tuple[str, float, float]], labels: list[str]) -> np.ndarray:
        g = np.full(n, -1, dtype=np.int64)
        for s, a, b in sorted(turns, key=lambda t: t[1] - t[2]):  # longest first, shorter overwrite
            g[int(round(a / step_s)):int(round(b / step_s))] = labels.index(s)
        return g

    r = grid(ref, ref_labels)
    h = grid(hyp, hyp_labels)
    scored = np.ones(n, dtype=bool)
    c = int(round(collar_s / step_s))
    for _, a, b in ref:
        for t in (a, b):
            k = int(round(t / step_s))
            scored[max(0, k - c):k + c] = False
    r, h = r[scored], h[scored]
    ref_speech = int(np.sum(r >= 0))
    if ref_speech == 0:
        return 0.0
    missed = int(np.sum((r >= 0) & (h < 0)))
    false_alarm = int(np.sum((r < 0) & (h >= 0)))
    both = (r >= 0) & (h >= 0)
    overlap = np.zeros((len(ref_labels), max(len(hyp_labels), 1)), dtype=np.int64)
    np.add.at(overlap, (r[both], h[both]), 1)
    rows, cols = linear_sum_assignment(-overlap)
    matched = int(overlap[rows, cols].sum())
    confusion = int(np.sum(both)) - matched
    return (missed + false_alarm + confusion) / ref_speech
