"""ASR vocabulary / language-model adaptation and its figure, the word error rate.

A candidate LM is built from the base sentences plus every operator-labelled training
transcript (new words get pronunciations, see :func:`models.asr.build_domain_lm`).
PocketSphinx's live cepstral mean normalisation starts cold in a new decoder, so
:func:`transcribe` primes each decoder on the first clip before scoring anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.asr import AsrModel, DomainLm, build_domain_lm, normalize_text

__all__ = ["word_errors", "corpus_wer", "pcm_to_float", "transcribe", "build_candidate_lm"]


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Total word edits / total reference words, on normalised text; NaN for no words."""
    edits = words = 0
    for r, h in zip(refs, hyps, strict=True):
        rt, ht = normalize_text(r).split(), normalize_text(h).split()
        edits += word_errors(rt, ht)
        words += len(rt)
    return edits / words if words else float("nan")


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """s16le bytes -> float32 in [-1, 1]."""
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def transcribe(model: AsrModel, clips: Sequence[np.ndarray]) -> list[str]:
    """Decode 16 kHz clips in one decoder, primed on the first clip."""
    if not clips:
        return []
    stream = model.new_stream()
    stream.start()
    stream.feed(clips[0])
    stream.finish()
    out = []
    for clip in clips:
        stream.start()
        stream.feed(clip)
        out.append(stream.finish().text)
    return out


def build_candidate_lm(base_sentences: Sequence[str], transcripts: Sequence[str], out_dir: Path) -> DomainLm:
    """The domain LM of the base sentences plus the labelled transcripts (repeats weigh more)."""
    return build_domain_lm([s for s in (*base_sentences, *transcripts) if normalize_text(s)], out_dir)
