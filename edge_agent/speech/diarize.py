"""Online speaker diarization of one conversation: who spoke each speech segment.

Each finished speech segment is embedded (Resemblyzer, :mod:`models.speaker`) and compared by
cosine similarity with the running-mean centroids of the speakers heard so far. Labels
(``S1``, ``S2``, ...) are handed out in order of first appearance, never change once given,
and are shared by all legs of the conversation.

**The leg rule.** On a leg-separated call a leg carries one party, and real voices through
G.711 vary a lot from one turn to the next (see docs/speakers.md), so the audio has to show
clearly that something else is going on before a leg's speech gets another label:

- A segment shorter than ``min_embed_s`` takes its leg's current speaker (on a leg with no
  speaker yet it founds the leg's speaker, with a weak vote); it never moves a centroid.
- On a one-party leg, a segment is a new voice only when its similarity to every voice of the
  leg is below ``new_voice_threshold`` and it holds at least ``min_evidence_s`` of speech
  (several people on one handset). One voice on one leg keeps one label. A segment unlike
  the leg's voices but too short to tell takes the nearest of them without moving its centroid.
- Two legs share a label only on strong evidence: a voice joins a speaker first heard on
  another leg only at ``cross_leg_threshold`` or above, from a segment of ``min_evidence_s``.
- Shared legs (ids matching ``shared_legs``, or marked with :meth:`Diarizer.mark_shared`)
  carry several voices: a segment joins the nearest of the leg's speakers at ``threshold``
  (the current one gets ``leg_bonus``), else founds a new one if it holds ``min_evidence_s``
  of speech, else takes the nearest. Segments longer than ``split_above_s`` are looked at
  window by window (1.6 s windows, 0.77 s apart) and split into turns where a run of at least
  ``min_run_windows`` windows is another speaker.

The embedding (the heavy part) runs outside the lock; only the clustering is serialised, so
legs of one conversation may call :meth:`Diarizer.label` from different threads.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment

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

    def replace(self, index: int, embedding: np.ndarray, weight: float = 1.0) -> None:
        """Start speaker ``index``'s centroid afresh from ``embedding``."""
        self._sums[index] = np.asarray(embedding, dtype=np.float64) * max(weight, 1e-6)
        self._weights[index] = weight

    def update(self, index: int, embedding: np.ndarray, weight: float = 1.0) -> None:
        if weight > 0:
            self._sums[index] = self._sums[index] + np.asarray(embedding, dtype=np.float64) * weight
            self._weights[index] += weight


@dataclass
class _LegVoices:
    """What the diarizer knows of one leg: its voices in order of appearance, the current one."""

    shared: bool
    voices: list[int] = field(default_factory=list)
    current: int | None = None
    # Shared legs: (unit embedding, seconds, label given) of the segments embedded so far.
    history: list[tuple[np.ndarray, float, int]] = field(default_factory=list)


HISTORY = 256  # segments a shared leg re-clusters at most (the newest)


class Diarizer:
    """Speaker labels for the segments of one conversation (all its legs)."""

    def __init__(self, encoder: SpeakerEncoder, config: DiarizerConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or DiarizerConfig()
        self.clusters = SpeakerClusters(self.config.max_speakers)
        self._legs: dict[str, _LegVoices] = {}
        self._evidence: list[float] = []  # per speaker: seconds of speech embedded into it
        self._marked: set[str] = set()
        self._lock = threading.Lock()

    def mark_shared(self, leg: str) -> None:
        """``leg`` carries several voices (a conference bridge, a speakerphone)."""
        with self._lock:
            self._marked.add(leg)
            if leg in self._legs:
                self._legs[leg].shared = True

    def is_shared(self, leg: str) -> bool:
        with self._lock:
            return self._is_shared(leg)

    def leg_speaker(self, leg: str) -> str | None:
        """The label of the last speaker heard on ``leg`` (None before the first segment)."""
        with self._lock:
            state = self._legs.get(leg)
            index = None if state is None else state.current
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
        if duration > cfg.split_above_s and self.is_shared(leg):
            return self._windowed(leg, samples, start_s, end_s)
        embedding = self.encoder.embed(samples)
        with self._lock:
            index, sim, new = self._assign(leg, embedding, duration)
        return [SpeakerTurn(SpeakerClusters.label_of(index), start_s, end_s, sim, new)]

    # -- internals (everything below runs under the lock) -------------------------------

    def _is_shared(self, leg: str) -> bool:
        state = self._legs.get(leg)
        if state is not None:
            return state.shared
        return leg in self._marked or any(fnmatch.fnmatchcase(leg, p) for p in self.config.shared_legs)

    def _leg(self, leg: str) -> _LegVoices:
        state = self._legs.get(leg)
        if state is None:
            state = self._legs[leg] = _LegVoices(shared=self._is_shared(leg))
        return state

    def _found(self, state: _LegVoices, embedding: np.ndarray, evidence_s: float) -> int:
        before = len(self.clusters)
        index = self.clusters.add(embedding, max(evidence_s, 0.25))
        if len(self.clusters) > before:
            self._evidence.append(evidence_s)
        else:
            self._evidence[index] += evidence_s
        if index not in state.voices:
            state.voices.append(index)
        return index

    def _join(self, state: _LegVoices, index: int, embedding: np.ndarray, evidence_s: float) -> None:
        if self._evidence[index] <= 0.0:  # founded by a short turn: its centroid was a guess
            self.clusters.replace(index, embedding, evidence_s)
        else:
            self.clusters.update(index, embedding, evidence_s)
        self._evidence[index] += evidence_s
        if index not in state.voices:
            state.voices.append(index)

    def _other_leg_match(self, state: _LegVoices, embedding: np.ndarray) -> tuple[int | None, float]:
        """The nearest speaker not yet heard on this leg, if at ``cross_leg_threshold``."""
        sims = self.clusters.similarities(embedding)
        best, best_sim = None, -1.0
        for i, s in enumerate(sims):
            if i not in state.voices and self._evidence[i] > 0.0 and s > best_sim:
                best, best_sim = i, float(s)
        if best is not None and best_sim >= self.config.cross_leg_threshold:
            return best, best_sim
        return None, best_sim

    def _assign(self, leg: str, embedding: np.ndarray, duration: float) -> tuple[int, float, bool]:
        """The speaker of a segment of ``duration`` s (>= ``min_embed_s``) with ``embedding``."""
        cfg = self.config
        state = self._leg(leg)
        sims = self.clusters.similarities(embedding)
        evidence = duration >= cfg.min_evidence_s
        index: int | None = None
        sure = True  # the segment's voice is clear enough to move its speaker's centroid
        if state.voices and all(self._evidence[i] <= 0.0 for i in state.voices):
            index = state.current  # only short turns so far: this is the voice they guessed at
        elif state.shared and state.history:
            index, sure = self._recluster(state, embedding, duration)
        elif state.voices:
            best = max(state.voices, key=lambda i: float(sims[i]))
            if float(sims[best]) >= cfg.new_voice_threshold:
                index = best
            elif not evidence:  # unlike the leg's voices, but too little speech to tell
                index, sure = best, False
        if index is None and evidence:
            index, _ = self._other_leg_match(state, embedding)
        new = False
        if index is None:
            before = len(self.clusters)
            index = self._found(state, embedding, duration)
            new = len(self.clusters) > before
        elif sure:
            self._join(state, index, embedding, duration)
        if state.shared:
            state.history.append((embedding / (np.linalg.norm(embedding) + 1e-12), duration, index))
            del state.history[:-HISTORY]
        state.current = index
        return index, float(sims[index]) if index < len(sims) else float(max(sims, default=0.0)), new

    def _recluster(self, state: _LegVoices, embedding: np.ndarray, duration: float) -> tuple[int | None, bool]:
        """A shared leg's segment, by re-clustering all the leg's segments with it.

        Resemblyzer embeddings of real voices through G.711 share a large common part (two
        different speakers often score 0.7-0.8, see docs/speakers.md), so from three segments on
        the leg's mean embedding is removed first and average-linkage clustering is cut at
        ``recluster_threshold`` on what remains; two segments are compared as they are, at
        ``pair_threshold``. Clusters map one-to-one onto the labels already given (most speech
        in common). The segment takes its cluster's label; a cluster without one is a new voice
        if it holds ``min_evidence_s`` of speech (None: found it), else the segment takes the
        nearest of the leg's voices without moving its centroid. Returns ``(index, sure)``.
        """
        cfg = self.config
        e = embedding / (np.linalg.norm(embedding) + 1e-12)
        points = np.array([h[0] for h in state.history] + [e], dtype=np.float64)
        seconds = np.array([h[1] for h in state.history] + [duration])
        if len(points) >= 3:  # compare what sets the voices apart: the leg's mean voice removed
            points = points - points.mean(axis=0)
            points = points / (np.linalg.norm(points, axis=1, keepdims=True) + 1e-12)
            cut = cfg.recluster_threshold
        else:  # two segments have no mean to remove
            cut = cfg.pair_threshold
        tree = linkage(points, method="average", metric="cosine")
        groups = fcluster(tree, t=1.0 - cut, criterion="distance") - 1
        given = sorted({h[2] for h in state.history})
        overlap = np.zeros((int(groups.max()) + 1, len(given)))
        for (_, w, label), g in zip(state.history, groups[:-1]):
            overlap[g, given.index(label)] += w
        rows, cols = linear_sum_assignment(-overlap)
        mapping = {int(r): given[int(c)] for r, c in zip(rows, cols) if overlap[r, c] > 0}
        mine = int(groups[-1])
        if mine in mapping:
            return mapping[mine], True
        if float(seconds[groups == mine].sum()) >= cfg.min_evidence_s:
            return None, True
        sims = self.clusters.similarities(embedding)
        return max(state.voices, key=lambda i: float(sims[i])), False

    def _short(self, leg: str, samples: np.ndarray, start_s: float, end_s: float) -> SpeakerTurn:
        with self._lock:
            state = self._leg(leg)
            if state.current is not None:
                return SpeakerTurn(SpeakerClusters.label_of(state.current), start_s, end_s, 0.0)
        embedding = self.encoder.embed(samples)
        with self._lock:
            state = self._leg(leg)
            if state.current is not None:  # another thread labelled this leg meanwhile
                return SpeakerTurn(SpeakerClusters.label_of(state.current), start_s, end_s, 0.0)
            before = len(self.clusters)
            index = self._found(state, embedding, 0.0)  # a weak vote, replaced by the first real one
            state.current = index
            return SpeakerTurn(SpeakerClusters.label_of(index), start_s, end_s, 0.0, len(self.clusters) > before)

    def _windowed(self, leg: str, samples: np.ndarray, start_s: float, end_s: float) -> list[SpeakerTurn]:
        windows = self.encoder.embed_windows(samples)
        embs, starts = windows.embeddings, windows.starts_s
        cfg = self.config
        with self._lock:
            state = self._leg(leg)
            # Provisional label per window: the nearest of the leg's speakers if close enough,
            # else a negative id from clustering the unknown windows of this segment among themselves.
            labels: list[int] = []
            unknown: list[np.ndarray] = []  # sums of this segment's unknown-speaker windows
            for e in embs:
                sims = self.clusters.similarities(e)
                own = [(float(sims[i]) + (cfg.leg_bonus if i == state.current else 0.0), i) for i in state.voices]
                if own and max(own)[0] >= cfg.threshold:
                    labels.append(max(own)[1])
                    continue
                usims = [float(np.dot(u / np.linalg.norm(u), e) / (np.linalg.norm(e) + 1e-12)) for u in unknown]
                k = int(np.argmax(usims)) if usims else -1
                if k < 0 or usims[k] < cfg.threshold:
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
                index, sim, new = self._assign(leg, mean, t1 - t0)
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

