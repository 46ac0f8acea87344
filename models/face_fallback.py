"""A second detector for faces BlazeFace scores too low: a Haar cascade proposes, BlazeFace confirms.

BlazeFace misses some faces a Haar cascade finds: faces that are not photographs (a painted
portrait) or carry drawn marks (a demo output with a box and landmark dots on the face), which
the networks score under their threshold at the scale the whole frame gives them. With
:class:`CascadeFallback` (``vision.cascade_fallback``) the cascade of the ``fer`` package, with
``fer``'s parameters, looks at the frame; each box it finds that no BlazeFace box already covers
is shown to BlazeFace again, on its own surroundings (:meth:`BlazeFaceDetector.confirm`), and
kept when the short-range model's own score threshold passes. The cascade alone would add its
false faces (hands, fur, a neck, a dark background); the second look rejects those on the
development photos.

The cascade's cost grows with the frame's area; it runs on a copy scaled so a face of
``min_face_px`` fills the cascade's 24 px window (faces smaller than that are dropped anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from models.blazeface import BlazeFaceDetector
from models.face_detect import Box
from models.fer_crop import FER_MIN_NEIGHBORS, FER_SCALE_FACTOR

__all__ = ["CASCADE_WINDOW_PX", "CascadeFallback", "covered"]

CASCADE_WINDOW_PX = 24  # the frontal-face cascade's detection window


def covered(box: Box, by: Sequence[Box], min_share: float = 0.5) -> bool:
    """Whether ``box`` and one of ``by`` overlap by at least ``min_share`` of the smaller one's area
    (nested boxes of one face count, whatever their sizes)."""
    x, y, w, h = box
    for bx, by_, bw, bh in by:
        ix = max(0, min(x + w, bx + bw) - max(x, bx))
        iy = max(0, min(y + h, by_ + bh) - max(y, by_))
        if ix * iy >= min_share * min(w * h, bw * bh):
            return True
    return False


class CascadeFallback:
    """Faces the cascade finds, BlazeFace did not, and BlazeFace confirms on a second look.

    Not thread-safe (one OpenCV cascade): the vision pipeline calls it from its one batch thread.
    """

    def __init__(self, cascade_path: Path, detector: BlazeFaceDetector, min_face_px: int,
                 min_score: float | None = None) -> None:
        self.cascade = cv2.CascadeClassifier(str(cascade_path))
        if self.cascade.empty():
            raise ValueError(f"could not load a Haar cascade from {cascade_path}")
        if min_face_px < 1:
            raise ValueError("min_face_px must be >= 1")
        self.detector, self.min_face_px = detector, min_face_px
        k = min(range(len(detector.specs)), key=lambda i: detector.specs[i].input_size)
        self.min_score = detector.min_scores[k] if min_score is None else min_score
        self.proposed = self.confirmed = 0  # counters, for benchmarks

    def propose(self, gray: np.ndarray) -> list[Box]:
        """The cascade's boxes (fer's scale factor and neighbours) in full-resolution pixels."""
        h, w = gray.shape[:2]
        scale = min(1.0, CASCADE_WINDOW_PX / self.min_face_px)
        small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=cv2.INTER_AREA)
        found = self.cascade.detectMultiScale(small, scaleFactor=FER_SCALE_FACTOR, minNeighbors=FER_MIN_NEIGHBORS,
                                              minSize=(CASCADE_WINDOW_PX, CASCADE_WINDOW_PX))
        out: list[Box] = []
        for x, y, bw, bh in (found if len(found) else ()):
            x0, y0 = int(round(x / scale)), int(round(y / scale))
            x1, y1 = min(w, int(round((x + bw) / scale))), min(h, int(round((y + bh) / scale)))
            if min(x1 - x0, y1 - y0) >= self.min_face_px:
                out.append((x0, y0, x1 - x0, y1 - y0))
        return out

    def find(self, image: np.ndarray, gray: np.ndarray, found: Sequence[Box]) -> list[Box]:
        """Boxes to add to ``found`` (BlazeFace's boxes for this frame): the cascade's boxes not
        :func:`covered` by ``found`` whose :meth:`BlazeFaceDetector.confirm` score passes."""
        new = [b for b in self.propose(gray) if not covered(b, found)]
        if not new:
            return []
        scores = self.detector.confirm(image, new)
        self.proposed += len(new)
        kept = [b for b, s in zip(new, scores) if s >= self.min_score]
        self.confirmed += len(kept)
        return kept
