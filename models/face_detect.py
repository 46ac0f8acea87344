"""Frontal-face detection with OpenCV's Haar cascade, run on a downscaled copy.

Cascade cost grows with image area (about 8 ms at 112x112 and 365 ms at 1280x886 on one
core), so :class:`FaceDetector` detects on a copy whose longer side is at most ``max_side``
and maps the boxes back to full-resolution pixels.

:class:`BatchDetector` is the interface the vision pipeline uses for any detector (this
cascade via :class:`HaarBatchDetector`, or ``models.blazeface.BlazeFaceDetector``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import cv2
import numpy as np

__all__ = ["BatchDetector", "Box", "FaceDetector", "HaarBatchDetector", "crop_faces", "default_cascade_path"]

Box = tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels


def default_cascade_path() -> Path:
    """OpenCV's bundled frontal-face default cascade."""
    return Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]  # not in cv2's stubs


class FaceDetector:
    """Haar-cascade face finder returning (x, y, w, h) boxes in full-resolution pixels."""

    def __init__(self, cascade_path: Path | None = None, max_side: int = 320,
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_face_px: int = 24,
                 max_faces: int = 16) -> None:
        path = Path(cascade_path) if cascade_path is not None else default_cascade_path()
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise ValueError(f"could not load a Haar cascade from {path}")
        if max_side < 32 or scale_factor <= 1.0 or min_face_px < 1 or max_faces < 1:
            raise ValueError("need max_side >= 32, scale_factor > 1, min_face_px >= 1, max_faces >= 1")
        self.max_side, self.scale_factor = max_side, scale_factor
        self.min_neighbors, self.min_face_px, self.max_faces = min_neighbors, min_face_px, max_faces

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Faces in a uint8 gray image, largest first, at most ``max_faces``."""
        if gray.ndim != 2:
            raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
        h, w = gray.shape
        scale = min(1.0, self.max_side / max(h, w))
        small = gray
        if scale < 1.0:
            small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        # The cascade's own window is 24x24: a smaller minimum is clamped up by OpenCV.
        min_side = max(1, int(self.min_face_px * scale))
        found = self.cascade.detectMultiScale(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
        )
        inv = 1.0 / scale
        boxes: list[Box] = []
        for x, y, bw, bh in (found if len(found) else ()):
            x0, y0 = int(round(x * inv)), int(round(y * inv))
            x1, y1 = min(w, int(round((x + bw) * inv))), min(h, int(round((y + bh) * inv)))
            if min(x1 - x0, y1 - y0) >= self.min_face_px:
                boxes.append((x0, y0, x1 - x0, y1 - y0))
        boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
        return boxes[: self.max_faces]


PreparedT = TypeVar("PreparedT")


class BatchDetector(Protocol[PreparedT]):
    """Faces for every image of a batch. ``color``: wants BGR (H, W, 3) images, else gray.

    ``prepare`` is the per-frame part that needs no batch (the agent runs it as each frame
    arrives, off the batch's critical path); ``detect_prepared`` finds the faces of a batch
    of prepared frames; ``detect_batch`` is both for plain images.
    """

    color: bool

    def prepare(self, image: np.ndarray) -> PreparedT: ...

    def detect_prepared(self, frames: Sequence[PreparedT]) -> list[list[Box]]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]: ...

    def close(self) -> None: ...


class HaarBatchDetector:
    """The Haar cascade behind :class:`BatchDetector`: frames of a batch in parallel threads.

    OpenCV's CascadeClassifier is not thread-safe, so each thread builds its own with
    ``make``. A batch of one frame runs in the caller with ``cv_threads`` OpenCV threads
    (they split the detection scales: lowest latency); larger batches run one frame per
    pool thread with OpenCV single-threaded (best throughput).
    """

    color = False

    def __init__(self, make: Callable[[], FaceDetector], threads: int, cv_threads: int) -> None:
        if threads < 1 or cv_threads < 1:
            raise ValueError("threads and cv_threads must be >= 1")
        self._make, self.threads, self.cv_threads = make, threads, cv_threads
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="haar")

    def _detect(self, gray: np.ndarray) -> list[Box]:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self._make()
        return detector.detect(gray)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Nothing to do ahead of the batch: the gray image itself."""
        return image

    def detect_prepared(self, frames: Sequence[np.ndarray]) -> list[list[Box]]:
        return self.detect_batch(frames)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        if len(images) <= 1 or self.threads == 1:
            cv2.setNumThreads(self.cv_threads)
            return [self._detect(g) for g in images]
        cv2.setNumThreads(1)
        return list(self._pool.map(self._detect, images))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def crop_faces(gray: np.ndarray, boxes: Sequence[Box], margin: float = 0.0) -> list[np.ndarray]:
    """Crop each box, grown by ``margin`` x its side on every edge and clipped to the image."""
    h, w = gray.shape[:2]
    crops: list[np.ndarray] = []
    for x, y, bw, bh in boxes:
        mx, my = int(round(bw * margin)), int(round(bh * margin))
        x0, y0 = max(0, x - mx), max(0, y - my)
        x1, y1 = min(w, x + bw + mx), min(h, y + bh + my)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {(x, y, bw, bh)} lies outside the {w}x{h} image")
        crops.append(gray[y0:y1, x0:x1])
    return crops
