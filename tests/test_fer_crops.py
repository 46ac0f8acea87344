"""The FER crop (models.fer_crop), the reference pipeline and the real photo set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.fer_crops import match_faces
from common.settings import Settings
from inference.vision import FrameJob, build_vision_pipeline
from models.artifacts import path_of
from models.fer_crop import FerCropGeometry, FerCropper, fer_reference_crop, iou, pad_like_fer, to_square
from models.fer_edge import preprocess_faces
from models.fer_reference import FerReference
from sim.photo_set import PHOTOS, REFERENCE_NOT_FACES, load_photo
from topics.vision import EMOTIONS, Frame


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return Settings().cache_dir


def _cascade(cache_dir: Path) -> Path:
    return path_of("fer", "haarcascade_frontalface_default.xml", cache_dir)


def test_to_square_grows_the_shorter_side_about_the_centre() -> None:
    assert to_square((10, 20, 30, 50)) == (0, 20, 50, 50)
    assert to_square((10, 20, 50, 31)) == (10, 11, 50, 50)
    assert to_square((5, 5, 8, 8)) == (5, 5, 8, 8)


def test_reference_crop_is_fers_square_plus_10px_on_a_40px_mean_border() -> None:
    gray = np.full((100, 120), 7, np.uint8)
    gray[-2:] = 200  # fer pads with the mean of the two bottom rows
    padded = pad_like_fer(gray)
    assert padded.shape == (180, 200) and padded[0, 0] == 200
    crop = fer_reference_crop(padded, (0, 0, 30, 30))
    assert crop.shape == (50, 50)  # 30 + 2 x 10
    assert crop[0, 0] == 200 and crop[-1, -1] == 7  # 10 px of border, then the image


def test_geometric_crop_follows_the_calibration() -> None:
    gray = np.arange(200 * 200, dtype=np.uint32).reshape(200, 200).astype(np.uint8)
    cropper = FerCropper(None, FerCropGeometry(scale=1.5, dx=0.1, dy=-0.2), refine=False)
    (crop,) = cropper.crops(gray, [(80, 80, 40, 40)])
    assert crop.shape == (60, 60)
    # centre (100 + 4, 100 - 8), side 60 -> top-left (74, 62)
    np.testing.assert_array_equal(crop, gray[62:122, 74:134])
    assert cropper.geometric == 1 and cropper.refined == 0


def test_geometric_crop_at_the_border_is_padded_not_shrunk() -> None:
    gray = np.full((50, 50), 90, np.uint8)
    cropper = FerCropper(None, FerCropGeometry(scale=2.0, dx=0.0, dy=0.0), refine=False)
    (crop,) = cropper.crops(gray, [(0, 0, 30, 30)])
    assert crop.shape == (60, 60)


def test_refined_crop_is_the_reference_crop_on_a_real_face(cache_dir: Path) -> None:
    bgr = load_photo(next(p for p in PHOTOS if p.file == "astronaut.png"), cache_dir)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    reference = FerReference(cache_dir)
    (ref_box,) = reference.find_faces(gray)
    # a tighter, lower box, as BlazeFace gives
    x, y, w, h = ref_box
    blaze_like = (x + 5, y + 12, w - 8, h - 8)
    cropper = FerCropper(_cascade(cache_dir))
    refined = cropper.find_reference_box(gray, blaze_like)
    # the cascade on a window, at nearby scales only, groups its hits a little differently
    assert refined is not None and iou(refined, ref_box) > 0.8 and iou(blaze_like, ref_box) < 0.8
    (crop,) = cropper.crops(gray, [blaze_like])
    np.testing.assert_array_equal(crop, fer_reference_crop(pad_like_fer(gray), refined))
    assert cropper.refined == 1
    ref_probs, = reference.classifier.predict(preprocess_faces([fer_reference_crop(pad_like_fer(gray), ref_box)]))
    probs, = reference.classifier.predict(preprocess_faces([crop]))
    assert probs.argmax() == ref_probs.argmax()


def test_refine_falls_back_to_geometry_where_the_cascade_sees_no_face(cache_dir: Path) -> None:
    gray = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    cropper = FerCropper(_cascade(cache_dir))
    (crop,) = cropper.crops(gray, [(100, 100, 80, 80)])
    assert cropper.geometric == 1 and crop.shape == (101, 101)  # round(1.265 x 80)


def test_match_faces_is_one_to_one_best_overlap_first() -> None:
    ref = [((0, 0, 10, 10), "happy"), ((8, 0, 10, 10), "sad"), ((100, 100, 10, 10), "angry")]
    edge = [((7, 0, 10, 10), "sad"), ((1, 0, 10, 10), "happy")]
    assert match_faces(ref, edge) == [((0, 0, 10, 10), "happy", "happy"), ((8, 0, 10, 10), "sad", "sad"),
                                      ((100, 100, 10, 10), "angry", None)]
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0


def test_boxes_listed_as_not_faces_are_what_the_reference_finds(cache_dir: Path) -> None:
    reference = FerReference(cache_dir)
    for photo in PHOTOS:
        for box in REFERENCE_NOT_FACES.get(photo.file, ()):
            gray = cv2.cvtColor(load_photo(photo, cache_dir), cv2.COLOR_BGR2GRAY)
            assert box in reference.find_faces(gray), (photo.file, box)


def test_held_out_group_photo_edge_finds_and_agrees_with_the_reference(cache_dir: Path) -> None:
    """group1.jpg (held out): every face the reference finds is found, with the reference's label."""
    photo = next(p for p in PHOTOS if p.file == "group1.jpg")
    assert photo.split == "heldout"
    bgr = load_photo(photo, cache_dir)
    ref = [(f.box, EMOTIONS[int(f.probs.argmax())]) for f in FerReference(cache_dir).detect_emotions(bgr)
           if f.box not in REFERENCE_NOT_FACES["group1.jpg"]]
    assert len(ref) == 6
    pipeline = build_vision_pipeline(Settings())
    try:
        frame = Frame("t", 0, 0, "png", cv2.imencode(".png", bgr)[1].tobytes())
        (outcome,) = pipeline.run_batch([FrameJob(frame, 0.0)])
    finally:
        pipeline.close()
    assert outcome.result is not None
    matched = match_faces(ref, [(f.box, f.label) for f in outcome.result.faces])
    assert [(box, r) for box, r, e in matched if e != r] == []
