"""Online speaker diarization of one conversation: who spoke each speech segment.

Each finished speech segment is embedded (Resemblyzer, :mod:`models.speaker`) and compared
by cosine similarity with the running-mean centroid of every speaker heard so far in the
conversation; it joins the most similar speaker at or above ``threshold``, else it founds a
new one. Labels (``S1``, ``S2``, ...) are handed out in order of first appearance and never
change, and they are shared by all legs of the conversation.

Threshold, measured on G.711 (8 kHz mu-law) espeak-ng speech, segments of 1.9-4 s: a
segment vs. the centroid of its own voice 0.88-0.96, vs. the other voice's centroid
0.72-0.79; pairwise same voice >= 0.84, different <= 0.78. Default 0.82. (Wideband audio
separates more: 0.94-0.98 vs. 0.60-0.64.)

- Segments shorter than ``min_embed_s`` give unreliable embeddings: they take their leg's
  current speaker, or failing that the nearest speaker at ``short_threshold``, and never move
  a centroid.
- Segments longer than ``split_above_s`` are looked at window by window (1.6 s windows,
  0.77 s apart): each window goes to the nearest known speaker, or to a speaker new to the
  segment; a run of at least ``min_run_windows`` windows of another speaker splits the
  segment into turns.
- A leg usually carries one person: similarity to the leg's current speaker gets
  ``leg_bonus`` added.

The embedding (the heavy part) runs outside the lock; only the clustering is serialised,
so legs of one conversation may call :meth:`Diarizer.label` from different threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from common.speech_settings import DiarizerConfig
from models.speaker import SAMPLE_RATE, WINDOW_S, SpeakerEncoder

__all__ = ["DiarizerConfig", "SpeakerTurn", "SpeakerClusters", "Diarizer"]


@dataclass(frozen=True, slots=True)
class SpeakerTurn:
    """``speaker`` talks from ``start_s`` to ``end_s`` (same clock as the segment given)."""

    speaker: str
    start_s: float
    end_s: float
    similarity: float
    new_speaker: bool = False


class SpeakerClusters:
    """Speakers as running-mean centroids of L2-normalised embeddings. Not locked."""

    def __init__(self, max_speakers: int = 32) -> None:
        self.max_speakers = max_speakers
        self._sums: list[np.ndarray] = []
        self._weights: list[float] = []

    def __len__(self) -> int:
        return len(self._sums)

    @staticmethod
    def label_of(index: int) -> str:
        return f"S{index + 1}"

    def centroid(self, index: int) -> np.ndarray:
        s = self._sums[index]
        return s / (np.linalg.norm(s) + 1e-12)

    def similarities(self, embedding: np.ndarray) -> np.ndarray:
        if not self._sums:
            return np.zeros(0, dtype=np.float32)
        e = embedding / (np.linalg.norm(embedding) + 1e-12)
        return np.array([float(np.dot(self.centroid(i), e)) for i in range(len(self._sums))])

    def nearest(self, embedding: np.ndarray, bonus: dict[int, float] | None = None) -> tuple[int | None, float]:
        sims = self.similarities(embedding)
        if not len(sims):
            return None, 0.0
        scored = sims + np.array([(bonus or {}).get(i, 0.0) for i in range(len(sims))])
        best = int(np.argmax(scored))
        return best, float(scored[best])

    def add(self, embedding: np.ndarray, weight: float = 1.0) -> int:
        """Found a new speaker (or, at ``max_speakers``, join the nearest); return its index."""
        if len(self._sums) >= self.max_speakers:
            index, _ = self.nearest(embedding)
            assert index is not None
            self.update(index, embedding, weight)
            return index
        self._sums.append(np.asarray(embedding, dtype=np.float64) * weight)
        self._weights.append(weight)
        return len(self._sums) - 1

    def update(self, index: int, embedding: np.ndarray, weight: float = 1.0) -> None:
        if weight > 0:
            self._sums[index] = self._sums[index] + np.asarray(embedding, dtype=np.float64) * weight
            self._weights[index] += weight


class Diarizer:
    """Speaker labels for the segments of one conversation (all its legs)."""

    def __init__(self, encoder: SpeakerEncoder, config: DiarizerConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or DiarizerConfig()
        self.clusters = SpeakerClusters(self.config.max_speakers)
        self._leg_speaker: dict[str, int] = {}
        self._lock = threading.Lock()

    def leg_speaker(self, leg: str) -> str | None:
        """The label of the last speaker heard on ``leg`` (None before the first segment)."""
        with self._lock:
            index = self._leg_speaker.get(leg)
        return None if index is None else SpeakerClusters.label_of(index)

    @property
    def speakers(self) -> list[str]:
        with self._lock:
            return [SpeakerClusters.label_of(i) for i in range(len(self.clusters))]

    def label(self, leg: str, samples: np.ndarray, start_s: float) -> list[SpeakerTurn]:
        """Speaker turns covering the segment ``samples`` (16 kHz) that starts at ``start_s``."""
        duration = len(samples) / SAMPLE_RATE
        end_s = start_s + duration
        cfg = self.config
        if duration < cfg.min_embed_s:
            return [self._short(leg, samples, start_s, end_s)]
        if duration <= cfg.split_above_s:
            embedding = self.encoder.embed(samples)
            with self._lock:
                index, sim, new = self._assign(leg, embedding, duration)
            return [SpeakerTurn(SpeakerClusters.label_of(index), start_s, end_s, sim, new)]
        return self._windowed(leg, samples, start_s, end_s)

    # -- internals (the _assign family runs under the lock) ---------------------------

    def _bonus(self, leg: str) -> dict[int, float]:
        current = self._leg_speaker.get(leg)
        return {} if current is None else {current: self.config.leg_bonus}

    def _assign(self, leg: str, embedding: np.ndarray, weight: float) -> tuple[int, float, bool]:
        index, sim = self.clusters.nearest(embedding, self._bonus(leg))
        if index is not None and sim >= self.config.threshold:
            self.clusters.update(index, embedding, weight)
            new = False
        else:
            before = len(self.clusters)
            index = self.clusters.add(embedding, weight)
            new = len(self.clusters) > before
        self._leg_speaker[leg] = index
        return index, sim, new

    def _short(self, leg: str, samples: np.ndarray, start_s: float, end_s: float) -> SpeakerTurn:
        with self._lock:
            current = self._leg_speaker.get(leg)
        if current is not None:
            return SpeakerTurn(SpeakerClusters.label_of(current), start_s, end_s, 0.0)
        embedding = self.encoder.embed(samples)
        with self._lock:
            index, sim = self.clusters.nearest(embedding)
            new = False
            if index is None or sim < self.config.short_threshold:
                before = len(self.clusters)
                index = self.clusters.add(embedding, weight=0.25)  # a weak founding vote
                new = len(self.clusters) > before
            self._leg_speaker[leg] = index
        return SpeakerTurn(SpeakerClusters.label_of(index), start_s, end_s, sim, new)

    def _windowed(self, leg: str, samples: np.ndarray, start_s: float, end_s: float) -> list[SpeakerTurn]:
        windows = self.encoder.embed_windows(samples)
        embs, starts = windows.embeddings, windows.starts_s
        cfg = self.config
        with self._lock:
            # Provisional label per window: the nearest known speaker if close enough, else a
            # negative id from clustering the unknown windows of this segment among themselves.
            labels: list[int] = []
            unknown: list[np.ndarray] = []  # sums of this segment's unknown-speaker windows
            for e in embs:
                index, sim = self.clusters.nearest(e, self._bonus(leg))
                if index is not None and sim >= cfg.threshold:
                    labels.append(index)
                    continue
                sims = [float(np.dot(u / np.linalg.norm(u), e) / (np.linalg.norm(e) + 1e-12)) for u in unknown]
                k = int(np.argmax(sims)) if sims else -1
                if k < 0 or sims[k] < cfg.threshold:
                    unknown.append(np.asarray(e, dtype=np.float64).copy())
                    k = len(unknown) - 1
                else:
                    unknown[k] += e
                labels.append(-1 - k)
            runs = _runs(labels, cfg.min_run_windows)

            def boundary(i: int) -> float:  # between the centres of windows i-1 and i
                t = start_s + (float(starts[i - 1]) + float(starts[i])) / 2 + WINDOW_S / 2
                return min(max(t, start_s), end_s)

            turns: list[SpeakerTurn] = []
            for k, (lo, hi, _) in enumerate(runs):
                mean = embs[lo:hi].mean(axis=0)
                t0 = start_s if k == 0 else boundary(lo)
                t1 = end_s if k == len(runs) - 1 else boundary(hi)
                index, sim, new = self._assign(leg, mean, weight=t1 - t0)
                if turns and SpeakerClusters.label_of(index) == turns[-1].speaker:
                    last = turns.pop()
                    turns.append(SpeakerTurn(last.speaker, last.start_s, t1, max(last.similarity, sim),
                                             last.new_speaker))
                else:
                    turns.append(SpeakerTurn(SpeakerClusters.label_of(index), t0, t1, sim, new))
        return turns


def _runs(labels: list[int], min_len: int) -> list[tuple[int, int, int]]:
    """Runs ``(lo, hi, label)`` of equal labels after a 3-window majority filter; runs shorter
    than ``min_len`` then join their longer neighbour."""
    smooth = list(labels)
    for i in range(1, len(labels) - 1):
        if labels[i - 1] == labels[i + 1] != labels[i]:
            smooth[i] = labels[i - 1]
    runs: list[list[int]] = []
    for i, label in enumerate(smooth):
        if runs and runs[-1][2] == label:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, label])
    changed = True
    while changed and len(runs) > 1:
        changed = False
        for k, (lo, hi, _) in enumerate(runs):
            if hi - lo < min_len:
                # Merge into the longer neighbour.
                left = runs[k - 1] if k > 0 else None
                right = runs[k + 1] if k + 1 < len(runs) else None
                target = (left if right is None or (left is not None and left[1] - left[0] >= right[1] - right[0])
                          else right)
                assert target is not None  # a run has at least one neighbour here
                target[0] = min(target[0], lo)
                target[1] = max(target[1], hi)
                del runs[k]
                # Neighbours that now touch with the same label become one run.
                merged: list[list[int]] = []
                for r in runs:
                    if merged and merged[-1][2] == r[2]:
                        merged[-1][1] = r[1]
                    else:
                        merged.append(r)
                runs = merged
                changed = True
                break
    return [(lo, hi, label) for lo, hi, label in runs]
