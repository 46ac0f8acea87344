"""Real face crops shared by the FER tests: Haar faces in the astronaut and t1 photos."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from models.artifacts import path_of
from models.face_detect import FaceDetector, crop_faces

PHOTOS = (("photos_astronaut", "astronaut.png"), ("photos_group", "t1.jpg"))
MARGINS = (0.0, 0.1, 0.2)


def load_gray(cache_dir: Path, name: str, basename: str) -> np.ndarray:
    img = cv2.imread(str(path_of(name, basename, cache_dir)), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"could not decode {basename}"
    return img


@lru_cache(maxsize=2)
def real_crops(cache_dir: Path) -> tuple[np.ndarray, ...]:
    """Each detected face at three margins, as is, mirrored, darker and brighter (6 x 12)."""
    # 640 px: the group photo's faces are ~120 px at 1280 wide, too small for the cascade at 320.
    detector = FaceDetector(path_of("fer", "haarcascade_frontalface_default.xml", cache_dir),
                            max_side=640)
    crops: list[np.ndarray] = []
    for name, basename in PHOTOS:
        gray = load_gray(cache_dir, name, basename)
        boxes = detector.detect(gray)
        for margin in MARGINS:
            for c in crop_faces(gray, boxes, margin=margin):
                crops += [c, np.ascontiguousarray(c[:, ::-1]),
                          cv2.convertScaleAbs(c, alpha=0.7), cv2.convertScaleAbs(c, beta=40)]
    return tuple(crops)
