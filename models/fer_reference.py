"""The reference FER pipeline: the ``fer`` package's ``FER().detect_emotions``, ported.

``fer`` itself is not installed (it pulls tensorflow); its defaults are: OpenCV's frontal-face
cascade at scaleFactor 1.1, minNeighbors 5, minSize 50 px on the full-resolution gray image; each
box made square, grown by 10 px, cut from the image padded by 40 px (``models.fer_crop``);
resized to 64x64 and classified by its mini-XCEPTION, whose torch port (``models.fer_edge``) is
checked against ``fer``'s own tflite copy in ``tests/test_fer_port.py``. The edge's labels are
scored against this pipeline's on the same photo (``bench.fer_crops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.artifacts import path_of
from models.fer_crop import FER_MIN_FACE_PX, FER_MIN_NEIGHBORS, FER_SCALE_FACTOR, fer_reference_crop, pad_like_fer
from models.fer_edge import FerClassifier, load_edge_fer, preprocess_faces

__all__ = ["FerReference", "ReferenceFace"]


@dataclass(frozen=True)
class ReferenceFace:
    """One face as ``fer`` reports it: the cascade's box (x, y, w, h) and the 7 class probabilities."""

    box: tuple[int, int, int, int]
    probs: np.ndarray


class FerReference:
    """``fer.FER().detect_emotions`` on a BGR image."""

    def __init__(self, cache_dir: Path, classifier: FerClassifier | None = None) -> None:
        self.cascade = cv2.CascadeClassifier(str(path_of("fer", "haarcascade_frontalface_default.xml", cache_dir)))
        if self.cascade.empty():
            raise ValueError("cannot load fer's Haar cascade")
        self.classifier = classifier if classifier is not None else load_edge_fer(cache_dir, device="cpu")

    def find_faces(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """``fer.FER.find_faces`` with its default parameters."""
        found = self.cascade.detectMultiScale(gray, scaleFactor=FER_SCALE_FACTOR, minNeighbors=FER_MIN_NEIGHBORS,
                                              flags=cv2.CASCADE_SCALE_IMAGE,
                                              minSize=(FER_MIN_FACE_PX, FER_MIN_FACE_PX))
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]

    def detect_emotions(self, bgr: np.ndarray) -> list[ReferenceFace]:
        """Faces and their class probabilities, in the cascade's order."""
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        boxes = self.find_faces(gray)
        if not boxes:
            return []
        padded = pad_like_fer(gray)
        probs = self.classifier.predict(preprocess_faces([fer_reference_crop(padded, b) for b in boxes]))
        return [ReferenceFace(b, p) for b, p in zip(boxes, probs, strict=True)]
