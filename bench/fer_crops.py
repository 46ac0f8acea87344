"""Edge FER against the reference pipeline on the real photo set: ``python -m bench.fer_crops --json``.

Each photo of ``sim.photo_set`` goes through the agent's own ``run_batch`` (BlazeFace, the FER
crop of ``vision.fer_crop``, the edge FER) and through the reference (``models.fer_reference``:
``fer``'s ``detect_emotions``). A reference face (boxes listed as not faces excluded) is *found*
when an edge face overlaps it (IoU >= 0.3, each edge face used once); a found face *agrees* when
both give it the same label.

- ``faces_found_reference``: found / reference faces; ``fer_agreement_reference``: agreeing /
  found; ``reference_faces``: the set's face count; each also per split (``dev``: the crop was
  calibrated on it; ``heldout``: scored only);
- ``missed``: the reference faces not found, ``disagreed``: (photo, box, reference label, edge label);
- ``extra``: edge faces that match no reference face; ``unreferenced_faces``: how many of them
  are faces the reference misses (``sim.photo_set.UNREFERENCED_FACES``, one box each), by kind;
  ``false_detections``: the rest (not faces, or a second box on a face);
- ``detect_ms_per_frame``: the detector's time per frame on this machine (prepare + detect, one
  frame a batch; mean over the photos of each one's best of 3);
- ``crop``: the crop settings, and how many faces the cascade refined vs the calibrated geometry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from common.settings import Settings, load_settings
from inference.vision import FrameJob, VisionPipeline, build_vision_pipeline
from models.face_detect import Box
from models.fer_crop import iou
from models.fer_reference import FerReference
from sim.photo_set import PHOTOS, REFERENCE_NOT_FACES, UNREFERENCED_FACES, Photo, photos
from topics.vision import EMOTIONS, Face, Frame

__all__ = ["Match", "fer_crop_figures", "match_faces"]



@dataclass(frozen=True)
class Match:
    """One reference face and the edge face matched to it (None: not found)."""

    photo: Photo
    box: Box
    reference_label: str
    edge_label: str | None


def match_faces(reference: list[tuple[Box, str]], edge: list[tuple[Box, str]],
                min_iou: float = 0.3) -> list[tuple[Box, str, str | None]]:
    """Greedy one-to-one matching by IoU, best pairs first: (reference box, its label, edge label or None)."""
    return _match(reference, edge, min_iou)[0]


def _match(reference: list[tuple[Box, str]], edge: list[tuple[Box, str]],
           min_iou: float = 0.3) -> tuple[list[tuple[Box, str, str | None]], list[Box]]:
    """:func:`match_faces` and the edge boxes left unmatched."""
    pairs = sorted(((iou(r[0], e[0]), i, j) for i, r in enumerate(reference) for j, e in enumerate(edge)),
                   reverse=True)
    taken_r: dict[int, int] = {}
    taken_e: set[int] = set()
    for score, i, j in pairs:
        if score < min_iou:
            break
        if i not in taken_r and j not in taken_e:
            taken_r[i] = j
            taken_e.add(j)
    return ([(box, label, edge[taken_r[i]][1] if i in taken_r else None)
             for i, (box, label) in enumerate(reference)],
            [e[0] for j, e in enumerate(edge) if j not in taken_e])


def _detect_ms(pipeline: VisionPipeline, images: list[np.ndarray], reps: int = 3) -> float:
    """The detector's CPU time per frame (prepare + detect + cascade fallback, one frame a batch), mean over the
    photos of each photo's best of ``reps`` (the best: the machine is shared)."""
    det, fallback = pipeline.detector, pipeline.fallback
    det.detect_prepared([det.prepare(images[0] if det.color else cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY))])
    per: list[float] = []
    for img in images:
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)  # made for the FER crops anyway
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            (found,) = det.detect_prepared([det.prepare(img if det.color else gray)])
            if fallback is not None:
                fallback.find(img, gray, found)
            times.append(time.perf_counter() - t0)
        per.append(min(times))
    return round(1000 * sum(per) / len(per), 2)


def _is_face(photo: Photo, box: Box) -> bool:
    return all(iou(box, nf) < 0.5 for nf in REFERENCE_NOT_FACES.get(photo.file, ()))


def fer_crop_figures(settings: Settings) -> dict[str, object]:
    """The figures above, for ``settings``' vision pipeline."""
    pipeline = build_vision_pipeline(settings)
    reference = FerReference(settings.cache_dir)
    matches: list[Match] = []
    extra: list[tuple[Photo, Box]] = []
    try:
        for i, (photo, bgr) in enumerate(photos(settings.cache_dir)):
            ref = [(f.box, EMOTIONS[int(f.probs.argmax())]) for f in reference.detect_emotions(bgr)
                   if _is_face(photo, f.box)]
            frame = Frame("bench", i, 0, "png", cv2.imencode(".png", bgr)[1].tobytes())
            outcome = pipeline.run_batch([FrameJob(frame, time.monotonic())])[0]
            faces: tuple[Face, ...] = outcome.result.faces if outcome.result is not None else ()
            edge = [(f.box, f.label) for f in faces]
            matched, unmatched = _match(ref, edge)
            matches += [Match(photo, box, rl, el) for box, rl, el in matched]
            extra += [(photo, b) for b in unmatched]
        cropper = pipeline.cropper
        fallback = pipeline.fallback
        counts = {"proposed": fallback.proposed, "confirmed": fallback.confirmed} if fallback is not None else None
        detect_ms = _detect_ms(pipeline, [bgr for _, bgr in photos(settings.cache_dir)])
    finally:
        pipeline.close()

    def split(ms: list[Match]) -> dict[str, object]:
        found = [m for m in ms if m.edge_label is not None]
        agree = [m for m in found if m.edge_label == m.reference_label]
        return {"reference_faces": len(ms),
                "faces_found_reference": round(len(found) / len(ms), 3) if ms else None,
                "fer_agreement_reference": round(len(agree) / len(found), 3) if found else None,
                "found": len(found), "agreeing": len(agree)}

    def unref(part: str | None) -> dict[str, object]:
        kinds: dict[str, int] = {}
        false = 0
        for photo in PHOTOS:
            if part is not None and photo.split != part:
                continue
            known = [(b, kind) for b, kind in UNREFERENCED_FACES.get(photo.file, ())]
            # one-to-one, as for the reference's faces: a second box on a face is a false detection
            matched, left = _match(known, [(b, "") for p, b in extra if p is photo])
            for _, kind, hit in matched:
                if hit is not None:
                    kinds[kind] = kinds.get(kind, 0) + 1
            false += len(left)
        return {"unreferenced_faces": dict(sorted(kinds.items())), "false_detections": false}

    out: dict[str, object] = dict(split(matches)) | unref(None)
    for part in ("dev", "heldout"):
        out[part] = split([m for m in matches if m.photo.split == part]) | unref(part)
    out["photos"] = len(PHOTOS)
    out["detect_ms_per_frame"] = detect_ms
    out["missed"] = [f"{m.photo.file} {list(m.box)}" for m in matches if m.edge_label is None]
    out["extra"] = [f"{p.file} {list(b)}" for p, b in extra]
    out["disagreed"] = [f"{m.photo.file} {list(m.box)} {m.reference_label}->{m.edge_label}"
                        for m in matches if m.edge_label is not None and m.edge_label != m.reference_label]
    c = settings.vision.fer_crop
    if counts is not None:
        out["cascade_fallback"] = counts
    out["crop"] = {"refine": c.refine, "scale": c.scale, "dx": c.dx, "dy": c.dy,
                   "refined": cropper.refined, "geometric": cropper.geometric}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fer_crops", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--no-refine", action="store_true", help="calibrated geometry only (vision.fer_crop.refine off)")
    p.add_argument("--tiles", action="store_true", help="BlazeFace also on square tiles (vision.blazeface_tiles)")
    p.add_argument("--cascade-fallback", action="store_true",
                   help="cascade proposes, BlazeFace confirms (vision.cascade_fallback)")
    args = p.parse_args(argv)
    settings = load_settings()
    update = {"blazeface_tiles": True} if args.tiles else {}
    if args.cascade_fallback:
        update["cascade_fallback"] = True
    if update:
        settings = settings.model_copy(update={"vision": settings.vision.model_copy(update=update)})
    if args.no_refine:
        crop = settings.vision.fer_crop.model_copy(update={"refine": False})
        settings = settings.model_copy(update={"vision": settings.vision.model_copy(update={"fer_crop": crop})})
    out = fer_crop_figures(settings)
    if not args.json:
        print(__doc__)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
