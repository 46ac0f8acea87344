"""How the edge turns model-update artifacts into served models (one factory per model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.model_slot import ModelSlot
from edge_agent.updates import ModelHandler
from models.asr import SAMPLE_RATE, AsrModel
from models.asr_artifact import ASR_FORMAT, asr_from_bytes
from models.fer_artifact import FER_FORMAT, fer_from_bytes
from models.fer_edge import INPUT_SIZE, FerClassifier

__all__ = ["fer_handler", "asr_handler"]


def fer_handler(slot: ModelSlot[FerClassifier], device: str = "auto", max_batch_size: int = 16) -> ModelHandler[FerClassifier]:
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


def asr_handler(slot: ModelSlot[AsrModel], work_dir: Path) -> ModelHandler[AsrModel]:
    """ASR language-model artifacts -> :class:`AsrModel` (files unpacked under ``work_dir``).

    Warm-up builds a decoder on the new LM and dictionary and decodes half a second of
    faint noise: a broken LM fails here, before the swap.
    """
    name = slot.current().name

    def load(data: bytes, version: str) -> AsrModel:
        return asr_from_bytes(data, work_dir, name, version)

    def warmup(model: AsrModel) -> None:
        noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2) * 1e-3).astype(np.float32)
        stream = model.new_stream()
        stream.start()
        stream.feed(noise)
        stream.finish()

    return ModelHandler(slot=slot, format=ASR_FORMAT, load=load, warmup=warmup)
