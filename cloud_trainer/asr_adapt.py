"""Vocabulary adaptation of the edge's Whisper ASR, and the one WER it is judged by.

A candidate vocabulary is a Whisper prompt built from the base sentences plus every
operator-labelled (or DC-revised) training transcript (:func:`build_candidate_vocabulary`);
the edge hands it to Whisper as previous text on every decode. The gate compares the
current and the candidate prompt with the edge's own final model on labelled holdout
clips (:func:`transcribe`), scored by :func:`models.text.wer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.edge_asr import AsrVocabulary, prompt_from_sentences
from models.text import normalize, wer
from models.whisper_asr import DecodeOptions, WhisperAsr

__all__ = ["corpus_wer", "pcm_to_float", "transcribe", "build_candidate_vocabulary", "vocabulary_words"]


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """The project's one WER (:func:`models.text.wer`)."""
    return wer(refs, hyps)


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """s16le bytes -> float32 in [-1, 1]."""
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def transcribe(asr: WhisperAsr, clips: Sequence[np.ndarray], prompt: str | None = None,
               options: DecodeOptions | None = None, batch: int = 8) -> list[str]:
    """Decode 16 kHz clips with ``prompt``, ``batch`` at a time."""
    opts = options or DecodeOptions(words=False)
    out: list[str] = []
    for i in range(0, len(clips), batch):
        part = list(clips[i:i + batch])
        out += [r.text for r in asr.transcribe(part, opts, prompts=[prompt] * len(part))]
    return out


def vocabulary_words(sentences: Sequence[str]) -> tuple[str, ...]:
    """The sorted distinct normalised words of ``sentences``."""
    return tuple(sorted({w for s in sentences for w in normalize(s).split()}))


def build_candidate_vocabulary(base_sentences: Sequence[str], transcripts: Sequence[str]) -> AsrVocabulary:
    """The prompt of the base sentences plus the labelled transcripts (the most recent last,
    distinct sentences only; Whisper reads the end of a prompt most)."""
    seen: set[str] = set()
    sentences: list[str] = []
    for s in (*base_sentences, *transcripts):
        key = normalize(s)
        if key and key not in seen:
            seen.add(key)
            sentences.append(s.strip())
    return AsrVocabulary(prompt=prompt_from_sentences(sentences), words=vocabulary_words(sentences))
