"""DC advanced inference on speech hard examples: more than the edge can afford.

For each low-confidence utterance the edge sent, :class:`SpeechReviser` decodes again with

- larger and multiple models: Whisper base (beam search, temperature fallback) and Whisper
  tiny.en (beam search); the hypothesis with the higher calibrated confidence wins (the
  edge's own hypothesis is only kept when no model heard any words);
- context: the adapted vocabulary prompt plus the conversation's earlier (revised) turns.

The result is a :class:`Revision`: text, words with times, confidence, which model made it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.whisper_asr import AsrResult, DecodeOptions, WhisperAsr

__all__ = ["Revision", "SpeechReviser", "DC_OPTIONS"]

DC_OPTIONS = DecodeOptions(beam_size=5, words=True, temperatures=(0.0, 0.2, 0.4, 0.6))
_CONTEXT_TURNS = 4
_MAX_CONVERSATIONS = 1000


@dataclass(frozen=True, slots=True)
class Revision:
    """A re-decoded utterance. ``model``/``version`` name the model whose hypothesis won."""

    result: AsrResult
    model: str
    version: str
    candidates: dict[str, float]  # model -> confidence of its hypothesis


class SpeechReviser:
    """Re-decodes utterances with several models and conversation context. Thread-safe."""

    def __init__(self, models: Sequence[WhisperAsr], options: DecodeOptions = DC_OPTIONS,
                 vocabulary_prompt: str = "") -> None:
        if not models:
            raise ValueError("at least one model")
        self.models = list(models)
        self.options = options
        self.vocabulary_prompt = vocabulary_prompt
        self._context: OrderedDict[str, deque[str]] = OrderedDict()
        self._lock = threading.Lock()

    def context(self, conversation: str) -> str:
        with self._lock:
            turns = list(self._context.get(conversation, ()))
        return " ".join(t for t in (self.vocabulary_prompt, *turns) if t)

    def remember(self, conversation: str, text: str) -> None:
        """Add a (revised) turn to the conversation's context."""
        if not text:
            return
        with self._lock:
            turns = self._context.setdefault(conversation, deque(maxlen=_CONTEXT_TURNS))
            self._context.move_to_end(conversation)
            turns.append(text)
            while len(self._context) > _MAX_CONVERSATIONS:
                self._context.popitem(last=False)

    def revise(self, conversation: str, clip: np.ndarray, edge: AsrResult | None = None) -> Revision:
        """Decode ``clip`` with every model in the conversation's context; the most confident wins."""
        prompt = self.context(conversation) or None
        best: tuple[AsrResult, WhisperAsr] | None = None
        candidates: dict[str, float] = {}
        for model in self.models:
            result = model.transcribe([clip], self.options, prompts=[prompt])[0]
            candidates[model.name] = round(result.confidence, 4)
            if result.text and (best is None or result.confidence > best[0].confidence):
                best = (result, model)
        if best is None:
            result = edge if edge is not None else AsrResult("", (), 0.0)
            revision = Revision(result, "edge", "edge", candidates)
        else:
            revision = Revision(best[0], best[1].name, best[1].version, candidates)
        self.remember(conversation, revision.result.text)
        return revision
