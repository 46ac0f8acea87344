"""Fine-tuning the edge FER network on teacher labels, with a replay set against forgetting.

A round starts from the serving version, trains on the newest labelled hard examples plus
``replay_ratio`` as many replay crops (original-domain faces and samples of earlier rounds)
and returns the candidate. :func:`agreement` is the gate's figure: the share of crops on
which a model's top class equals the teacher's label.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common.trainer_settings import FerTrainSettings
from models.fer_edge import FerClassifier, MiniXception, preprocess_faces, resolve_device
from topics.vision import EMOTIONS

__all__ = ["LabelledCrop", "TrainReport", "decode_crop", "load_crop_dir", "fine_tune", "agreement", "label_index"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True, slots=True)
class LabelledCrop:
    crop: np.ndarray  # uint8 gray
    label: int  # index into EMOTIONS


@dataclass(frozen=True, slots=True)
class TrainReport:
    n_new: int
    n_replay: int
    epochs: int
    seconds: float
    final_loss: float


def decode_crop(data: bytes) -> np.ndarray:
    """A PNG face crop (as the edge sends it) -> uint8 gray; ValueError if it is no image."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        raise ValueError("not a decodable image")
    return img


def load_crop_dir(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(file name, gray crop) of every image in ``folder``, sorted by name."""
    out = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if img is not None and img.size:
                out.append((path.name, img))
    return out


def _tensors(samples: Sequence[LabelledCrop]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(preprocess_faces([s.crop for s in samples]))
    y = torch.tensor([s.label for s in samples], dtype=torch.long)
    return x, y


def fine_tune(base: MiniXception, new: Sequence[LabelledCrop], replay_pool: Sequence[LabelledCrop],
              settings: FerTrainSettings, seed: int = 0) -> tuple[MiniXception, TrainReport]:
    """Train a copy of ``base`` on ``new`` + a random replay share; ``base`` is not touched."""
    if not new:
        raise ValueError("nothing to train on")
    t0 = time.perf_counter()
    rng = random.Random(seed)
    n_replay = min(len(replay_pool), int(round(len(new) * settings.replay_ratio)))
    replay = rng.sample(list(replay_pool), n_replay)
    device = torch.device(resolve_device(settings.device))
    x, y = _tensors(list(new) + replay)
    x, y = x.to(device), y.to(device)
    model = copy.deepcopy(base)
    if model.folded:
        raise ValueError("cannot train a BatchNorm-folded model")
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    steps = settings.epochs * ((len(x) + settings.batch_size - 1) // settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.2)
    loss_value = float("nan")
    for _ in range(settings.epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples in training mode
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
    model.to("cpu").eval()
    report = TrainReport(n_new=len(new), n_replay=n_replay, epochs=settings.epochs,
                         seconds=time.perf_counter() - t0, final_loss=loss_value)
    return model, report


def agreement(model: MiniXception | FerClassifier, samples: Sequence[LabelledCrop]) -> float:
    """Share of ``samples`` whose top class under ``model`` is the (teacher) label; NaN if none."""
    if not samples:
        return float("nan")
    clf = model if isinstance(model, FerClassifier) else FerClassifier(model, device="cpu")
    preds: list[int] = []
    for i in range(0, len(samples), 128):
        chunk = samples[i:i + 128]
        preds += clf.predict(preprocess_faces([s.crop for s in chunk])).argmax(axis=1).tolist()
    return float(np.mean([p == s.label for p, s in zip(preds, samples)]))


def label_index(label: str) -> int:
    """EMOTIONS index of a label; ValueError for anything else."""
    return EMOTIONS.index(label)
