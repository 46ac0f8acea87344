"""Scoring: word error rate (the product's one WER, :func:`models.text.wer`), diarization error
rate and the speaker error of leg-separated calls."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.text import wer

__all__ = ["wer", "der", "speaker_error", "segment_parties"]


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


def speaker_error(pairs: Iterable[tuple[str, str]]) -> float:
    """Fraction of segments whose label is not their party's, under the best one-to-one mapping.

    ``pairs`` holds one ``(party, label)`` per transcript segment. Labels are mapped to parties
    one-to-one so as to maximise the segments that agree (Hungarian); a label left without a
    party (one party split in two, say) is wrong on every segment it carries.
    """
    items = list(pairs)
    if not items:
        return 0.0
    parties = sorted({p for p, _ in items})
    labels = sorted({h for _, h in items})
    counts = np.zeros((len(parties), len(labels)), dtype=np.int64)
    for p, h in items:
        counts[parties.index(p), labels.index(h)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return 1.0 - float(counts[rows, cols].sum()) / len(items)


def segment_parties(
    reference: Iterable[tuple[str, str, float, float]],
    segments: Iterable[tuple[str, float, float]],
) -> list[str | None]:
    """The party of each hypothesis segment ``(leg, start_s, end_s)``: the reference speaker
    ``(speaker, leg, start_s, end_s)`` talking longest within it on its leg, else the nearest
    in time on its leg (None for a leg without reference speech)."""
    ref = list(reference)
    out: list[str | None] = []
    for leg, a, b in segments:
        mine = [(s, ra, rb) for s, rleg, ra, rb in ref if rleg == leg]
        if not mine:
            out.append(None)
            continue
        talk: dict[str, float] = {}
        for s, ra, rb in mine:
            talk[s] = talk.get(s, 0.0) + max(0.0, min(b, rb) - max(a, ra))
        best = max(talk, key=lambda s: talk[s])
        if talk[best] > 0.0:
            out.append(best)
        else:
            out.append(min(mine, key=lambda t: max(t[1] - b, a - t[2]))[0])
    return out
