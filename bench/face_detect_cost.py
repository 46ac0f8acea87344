"""What the face-finding options cost per frame: ``python -m bench.face_detect_cost --json``.

BlazeFace as the agent builds it (``vision``'s settings), with ``vision.blazeface_tiles``
and/or ``vision.cascade_fallback`` on or off, on each photo of ``sim.photo_set``, one frame a
batch, on the CPU. The configurations take turns on every photo (so load from other work on a
shared machine falls on all of them alike) and each photo's time is its best of ``--reps``.

- ``configs``: per configuration, ``mean_ms`` (over the photos), ``max_ms``, ``ms_1080p`` (the
  1920x1080 photo), ``ms_square`` (mean over the photos within 1.25 of square: no tiles there);
- ``cascade_ms``: the cascade's share of the fallback (``CascadeFallback.propose`` alone), mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2
import numpy as np

from common.settings import load_settings
from models.artifacts import path_of
from models.blazeface import BlazeFaceDetector, load_blazeface, square_tiles
from models.face_fallback import CascadeFallback
from sim.photo_set import photos

__all__ = ["detect_cost"]

CONFIGS = (("default", False, False), ("tiles", True, False), ("cascade_fallback", False, True),
           ("tiles+cascade_fallback", True, True))


def _once(det: BlazeFaceDetector, fallback: CascadeFallback | None, img: np.ndarray, gray: np.ndarray) -> float:
    t0 = time.perf_counter()
    (found,) = det.detect_prepared([det.prepare(img)])
    if fallback is not None:
        fallback.find(img, gray, found)
    return (time.perf_counter() - t0) * 1e3


def detect_cost(reps: int = 5) -> dict[str, object]:
    """The figures above."""
    settings = load_settings()
    v = settings.vision
    ranges = ("full", "short") if v.blazeface_short_range else ("full",)
    cascade = path_of("fer", "haarcascade_frontalface_default.xml", settings.cache_dir)
    dets = {tiles: load_blazeface(settings.cache_dir, ranges=ranges, min_face_px=v.min_face_px,
                                  max_faces=v.max_faces, workers=v.detect_workers, tiles=tiles)
            for tiles in (False, True)}
    fallback = CascadeFallback(cascade, dets[False], v.min_face_px)
    fallbacks = {False: fallback, True: CascadeFallback(cascade, dets[True], v.min_face_px)}
    images = [(p, bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)) for p, bgr in photos(settings.cache_dir)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    cascade_ms: list[float] = []
    try:
        _once(dets[True], fallbacks[True], images[0][1], images[0][2])  # warm-up
        for _, bgr, gray in images:
            best = {name: float("inf") for name, _, _ in CONFIGS}
            best_cascade = float("inf")
            for _ in range(reps):
                for name, tiles, fb in CONFIGS:
                    best[name] = min(best[name], _once(dets[tiles], fallbacks[tiles] if fb else None, bgr, gray))
                t0 = time.perf_counter()
                fallback.propose(gray)
                best_cascade = min(best_cascade, (time.perf_counter() - t0) * 1e3)
            for name in best:
                times[name].append(best[name])
            cascade_ms.append(best_cascade)
    finally:
        for d in dets.values():
            d.close()
    square = [i for i, (_, bgr, _) in enumerate(images) if not square_tiles(*bgr.shape[:2])]
    hd = next(i for i, (_, bgr, _) in enumerate(images) if bgr.shape[:2] == (1080, 1920))
    configs = {name: {"mean_ms": round(float(np.mean(t)), 1), "max_ms": round(max(t), 1),
                      "ms_1080p": round(t[hd], 1), "ms_square": round(float(np.mean([t[i] for i in square])), 1)}
               for name, t in times.items()}
    return {"photos": len(images), "square_photos": len(square), "reps": reps, "configs": configs,
            "cascade_ms": round(float(np.mean(cascade_ms)), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.face_detect_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--reps", type=int, default=5, help="runs per photo and configuration (the best counts)")
    args = p.parse_args(argv)
    out = detect_cost(args.reps)
    if not args.json:
        print(__doc__)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
