"""How the edge turns model-update artifacts into served models (one factory per model)."""

from __future__ import annotations

import numpy as np

from edge_agent.updates import ModelHandler
from inference.model_slot import ModelSlot
from models.edge_asr import VOCAB_FORMAT, EdgeAsr, vocabulary_from_bytes
from models.fer_artifact import FER_FORMAT, fer_from_bytes
from models.fer_edge import INPUT_SIZE, FerClassifier

__all__ = ["fer_handler", "asr_handler"]


def fer_handler(slot: ModelSlot[FerClassifier], device: str = "auto",
                max_batch_size: int = 16) -> ModelHandler[FerClassifier]:
    """Artifacts of the edge FER network -> :class:`FerClassifier` in ``slot``.

    Warm-up runs a full-size batch so the first real batch on the new version pays no
    first-call costs.
    """
    name = slot.current().name

    def load(data: bytes, version: str) -> FerClassifier:
        return FerClassifier(fer_from_bytes(data), device=device, name=name, version=version)

    def warmup(model: FerClassifier) -> None:
        batch = np.zeros((max_batch_size, 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        probs = model.predict(batch)
        if probs.shape != (max_batch_size, 7) or not np.isfinite(probs).all():
            raise ValueError(f"warm-up output {probs.shape} is not finite (N, 7)")

    return ModelHandler(slot=slot, format=FER_FORMAT, load=load, warmup=warmup)


def asr_handler(slot: ModelSlot[EdgeAsr]) -> ModelHandler[EdgeAsr]:
    """Vocabulary artifacts (the Whisper prompt the DC adapts) -> the edge's :class:`EdgeAsr`
    with that vocabulary; the Whisper weights stay loaded and shared.

    Warm-up decodes one second of faint noise with the new prompt: a prompt that breaks the
    decoder fails here, before the swap.
    """
    name = slot.current().name

    def load(data: bytes, version: str) -> EdgeAsr:
        return slot.current().model.with_vocabulary(vocabulary_from_bytes(data, name, version))

    def warmup(model: EdgeAsr) -> None:
        noise = (np.random.default_rng(0).standard_normal(16000) * 1e-3).astype(np.float32)
        model.decode_final(noise)

    return ModelHandler(slot=slot, format=VOCAB_FORMAT, load=load, warmup=warmup)
