"""The cascade fallback (models.face_fallback): the cascade proposes, BlazeFace confirms, on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.camera import face_test_photos
from models.artifacts import path_of
from models.blazeface import load_blazeface
from models.face_fallback import CascadeFallback, covered
from models.fer_crop import iou
from models.fer_reference import FerReference
from sim.photo_set import PHOTOS, REFERENCE_NOT_FACES, load_photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cascade(cache_dir: Path) -> Path:
    return path_of("fer", "haarcascade_frontalface_default.xml", cache_dir)


def test_covered_counts_nested_boxes_of_one_face() -> None:
    assert covered((10, 10, 50, 50), [(0, 0, 100, 100)])  # inside a larger box: IoU 0.25, still covered
    assert covered((0, 0, 100, 100), [(20, 20, 40, 40)])
    assert not covered((0, 0, 50, 50), [(40, 40, 50, 50)])  # a corner touches
    assert not covered((0, 0, 50, 50), [])


def test_confirm_keeps_the_cascades_faces_and_drops_its_non_faces_on_dev_photos(cache_dir: Path) -> None:
    """On the development photos: every reference face passes the short-range model's own
    threshold on a second look, every box listed as not a face (hands, a neck, a dark
    background) fails it."""
    detector = load_blazeface(cache_dir)
    fallback = CascadeFallback(_cascade(cache_dir), detector, min_face_px=36)
    reference = FerReference(cache_dir)
    faces = non_faces = 0
    for photo in PHOTOS:
        if photo.split != "dev":
            continue
        bgr = load_photo(photo, cache_dir)
        boxes = reference.find_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        for box, score in zip(boxes, detector.confirm(bgr, boxes), strict=True):
            if box in REFERENCE_NOT_FACES.get(photo.file, ()):
                non_faces += 1
                assert score < fallback.min_score, (photo.file, box, score)
            else:
                faces += 1
                assert score >= fallback.min_score, (photo.file, box, score)
    assert faces == 16 and non_faces == 3
    assert detector.confirm(bgr, []) == []


def test_fallback_finds_a_face_blazeface_misses_and_adds_nothing_it_found(cache_dir: Path) -> None:
    """The astronaut in a 2048x512 strip: letterboxed, BlazeFace misses the face (9 px at its
    input); the cascade finds it at full resolution and BlazeFace confirms it on its surroundings."""
    astronaut = face_test_photos(cache_dir)[1][1]
    strip = np.full((512, 2048, 3), 128, np.uint8)
    strip[:, :512] = astronaut
    detector = load_blazeface(cache_dir)
    fallback = CascadeFallback(_cascade(cache_dir), detector, min_face_px=36)
    (face,) = detector.detect(astronaut)
    where = face
    found = detector.detect(strip)
    assert found == []
    added = fallback.find(strip, cv2.cvtColor(strip, cv2.COLOR_BGR2GRAY), found)
    assert len(added) == 1 and iou(added[0], where) >= 0.5, (added, where)
    assert fallback.proposed >= 1 and fallback.confirmed == 1
    # where BlazeFace found the face already, the cascade's box for it is not proposed again
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    assert fallback.find(astronaut, gray, [face]) == []
    with pytest.raises(ValueError):
        CascadeFallback(_cascade(cache_dir), detector, min_face_px=0)


def test_pipeline_adds_the_fallbacks_faces_only_when_set(cache_dir: Path) -> None:
    from common.settings import Settings, VisionSettings
    from inference.vision import FrameJob, build_vision_pipeline
    from topics.vision import Frame

    astronaut = face_test_photos(cache_dir)[1][1]
    strip = np.full((512, 2048, 3), 128, np.uint8)
    strip[:, :512] = astronaut
    frame = Frame("t", 0, 0, "png", cv2.imencode(".png", strip)[1].tobytes())
    counts = []
    for on in (False, True):
        pipeline = build_vision_pipeline(Settings(cache_dir=cache_dir, vision=VisionSettings(cascade_fallback=on)))
        try:
            assert (pipeline.fallback is not None) == on
            (outcome,) = pipeline.run_batch([FrameJob(frame, 0.0)])
        finally:
            pipeline.close()
        assert outcome.result is not None
        counts.append(len(outcome.result.faces))
    assert counts == [0, 1]
