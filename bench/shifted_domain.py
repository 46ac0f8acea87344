"""A shifted camera domain made from the real face photos: dark, blurred, noisy frames.

Each frame is a face-centred window of the astronaut or group photo with a random pose
(scale, shift, rotation, mirror), then the shift: exposure down to 25-45 %, Gaussian blur
and sensor noise. ``seed`` decides everything, so train and held-out sets never share a
frame. Clean frames (no shift) give the original-domain replay crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.artifacts import path_of
from models.face_detect import FaceDetector
from topics.vision import Frame

__all__ = ["FaceSources", "ShiftParams", "make_frame", "make_frames", "encode_png", "write_replay_dir"]

FRAME_SIDE = 160


@dataclass(frozen=True, slots=True)
class ShiftParams:
    exposure: tuple[float, float] = (0.25, 0.45)
    blur_sigma: tuple[float, float] = (1.0, 1.8)
    noise_sigma: tuple[float, float] = (6.0, 12.0)


@dataclass(frozen=True, slots=True)
class FaceSources:
    """The real photos and the faces the detector finds in them (x, y, w, h)."""

    faces: tuple[tuple[np.ndarray, tuple[int, int, int, int]], ...]

    @classmethod
    def load(cls, cache_dir: Path) -> FaceSources:
        detector = FaceDetector(max_side=800, min_face_px=20)
        faces = []
        for name, member in (("photos_astronaut", "astronaut.png"), ("photos_group", "t1.jpg")):
            gray = cv2.imread(str(path_of(name, member, cache_dir)), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                raise FileNotFoundError(member)
            faces += [(gray, box) for box in detector.detect(gray)]
        if not faces:
            raise RuntimeError("no faces found in the test photos")
        return cls(tuple(faces))


def make_frame(sources: FaceSources, rng: np.random.Generator, shift: ShiftParams | None) -> np.ndarray:
    """One gray frame (FRAME_SIDE square) around a random face, shifted if ``shift`` is given."""
    gray, (x, y, w, h) = sources.faces[int(rng.integers(len(sources.faces)))]
    cx = x + w / 2 + rng.uniform(-0.08, 0.08) * w
    cy = y + h / 2 + rng.uniform(-0.08, 0.08) * h
    face_frac = rng.uniform(0.45, 0.6)  # face side as a share of the frame side
    m = cv2.getRotationMatrix2D((cx, cy), rng.uniform(-12, 12), FRAME_SIDE * face_frac / w)
    m[0, 2] += FRAME_SIDE / 2 - cx
    m[1, 2] += FRAME_SIDE / 2 - cy
    frame = cv2.warpAffine(gray, m, (FRAME_SIDE, FRAME_SIDE), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        frame = np.ascontiguousarray(frame[:, ::-1])
    if shift is None:
        return frame
    f = frame.astype(np.float32) * rng.uniform(*shift.exposure)
    f = cv2.GaussianBlur(f, (0, 0), rng.uniform(*shift.blur_sigma))
    f += rng.normal(0.0, rng.uniform(*shift.noise_sigma), f.shape).astype(np.float32)
    return np.clip(f, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def make_frames(sources: FaceSources, n: int, seed: int, device: str, *, shifted: bool = True,
                first_seq: int = 0, shift: ShiftParams | None = None) -> list[Frame]:
    """``n`` PNG frames of ``device`` with consecutive sequence numbers."""
    rng = np.random.default_rng(seed)
    params = (shift or ShiftParams()) if shifted else None
    return [Frame(device=device, seq=first_seq + i, captured_at_ms=1_700_000_000_000 + i, encoding="png",
                  data=encode_png(make_frame(sources, rng, params)))
            for i in range(n)]


def write_replay_dir(sources: FaceSources, folder: Path, n: int, seed: int) -> Path:
    """Clean (original-domain) face crops as PNG files: the DC's replay set."""
    folder.mkdir(parents=True, exist_ok=True)
    detector = FaceDetector(max_side=FRAME_SIDE, min_face_px=24)
    rng = np.random.default_rng(seed)
    written = 0
    while written < n:
        frame = make_frame(sources, rng, None)
        for bx, by, bw, bh in detector.detect(frame)[:1]:
            cv2.imwrite(str(folder / f"clean-{seed}-{written:05d}.png"), frame[by:by + bh, bx:bx + bw])
            written += 1
    return folder
