"""Labels for stored hard examples: the DC teacher labels face crops; audio waits for operators.

An undecodable crop gets the empty label from source ``invalid``, so it is never retried
and never trained on.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud_trainer.fer_train import LabelledCrop, decode_crop, load_crop_dir
from cloud_trainer.store import SampleStore
from models.fer_teacher import TeacherFer
from topics.codec import now_ms
from topics.dc import Label
from topics.vision import EMOTIONS

__all__ = ["FaceLabeler", "ReplaySet", "INVALID"]

INVALID = "invalid"


class FaceLabeler:
    """Labels unlabelled face samples of one model with the teacher's top class."""

    def __init__(self, teacher: TeacherFer, store: SampleStore, model: str, batch: int = 64) -> None:
        self.teacher = teacher
        self.store = store
        self.model = model
        self.batch = batch
        self.source = f"teacher:{teacher.name}@{teacher.version}"
        self.labelled = 0
        self.invalid = 0

    def _predict(self, crops: list[np.ndarray]) -> list[str]:
        return [EMOTIONS[i] for i in self.teacher.predict(crops).argmax(axis=1)]

    async def label_pending(self) -> int:
        """Label every waiting face sample; return how many got a label."""
        done = 0
        while True:
            pending = [s for s in await self.store.samples(self.model, labelled=False, limit=self.batch)
                       if s.kind == "face"]
            if not pending:
                return done
            now = now_ms()
            labels: list[Label] = []
            good, crops = [], []
            for s in pending:
                try:
                    crops.append(decode_crop(s.data))
                    good.append(s)
                except ValueError:
                    labels.append(Label(s.key, "", INVALID, now))
                    self.invalid += 1
            if crops:
                names = await asyncio.to_thread(self._predict, crops)
                labels += [Label(s.key, n, self.source, now) for s, n in zip(good, names)]
            await self.store.set_labels(labels)
            done += len(good)
            self.labelled += len(good)


@dataclass(frozen=True, slots=True)
class ReplaySet:
    """Original-domain face crops with teacher labels, split like the store (by name hash)."""

    train: tuple[LabelledCrop, ...]
    holdout: tuple[LabelledCrop, ...]

    @classmethod
    def empty(cls) -> ReplaySet:
        return cls((), ())

    @classmethod
    def from_dir(cls, folder: Path | None, teacher: TeacherFer, holdout_percent: int) -> ReplaySet:
        if folder is None or not Path(folder).is_dir():
            return cls.empty()
        named = load_crop_dir(Path(folder))
        if not named:
            return cls.empty()
        labels = teacher.predict([c for _, c in named]).argmax(axis=1)
        train: list[LabelledCrop] = []
        holdout: list[LabelledCrop] = []
        for (name, crop), label in zip(named, labels):
            bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 100
            (holdout if bucket < holdout_percent else train).append(LabelledCrop(crop, int(label)))
        return cls(tuple(train), tuple(holdout))
