"""The vision pipeline's batch function with either detector, on real photos and close-ups."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest

from common.settings import Settings
from devices.camera import face_test_photos
from inference.vision import FrameJob, VisionPipeline, build_vision_pipeline
from models.blazeface import BlazeFaceDetector
from models.face_detect import HaarBatchDetector
from topics.vision import EMOTIONS, Frame

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _jobs(cache_dir: Path) -> tuple[list[FrameJob], list[int]]:
    photos = face_test_photos(cache_dir)
    jobs = []
    for i, (_, bgr, _) in enumerate(photos):
        data = cv2.imencode(".png", bgr)[1].tobytes()  # lossless: the same pixels the oracle saw
        jobs.append(FrameJob(Frame("cam-pipe", i, 0, "png", data), time.monotonic()))
    return jobs, [n for _, _, n in photos]


def _pipeline(settings: Settings, detector: str) -> VisionPipeline:
    vision = settings.vision.model_copy(update={"detector": detector, "torch_threads": 1})
    return build_vision_pipeline(settings.model_copy(update={"vision": vision}))


def test_blazeface_batch_finds_every_face_and_classifies_it(settings: Settings) -> None:
    pipeline = _pipeline(settings, "blazeface")
    try:
        assert isinstance(pipeline.detector, BlazeFaceDetector)
        jobs, expected = _jobs(settings.cache_dir)
        bad = FrameJob(Frame("cam-pipe", 99, 0, "jpeg", b"\xff\xd8\xffnot a jpeg"), time.monotonic())
        outcomes = pipeline.run_batch([*jobs[:2], bad, *jobs[2:]])
    finally:
        pipeline.close()
    assert outcomes[2].error is not None and outcomes[2].error.reason == "bad_image"
    good = [o for i, o in enumerate(outcomes) if i != 2]
    assert [len(o.result.faces) for o in good] == expected  # type: ignore[union-attr]
    for o in good:
        assert o.result is not None and o.result.timing.batch_size == len(jobs) + 1
        assert len(o.crops) == len(o.result.faces) and o.probs is not None
        assert all(f.label in EMOTIONS for f in o.result.faces)
    assert [o.job.frame.seq for o in outcomes] == [0, 1, 99, *range(2, len(jobs))]


def test_haar_stays_selectable_and_finds_fewer_in_the_group(settings: Settings) -> None:
    pipeline = _pipeline(settings, "haar")
    try:
        assert isinstance(pipeline.detector, HaarBatchDetector)
        jobs, expected = _jobs(settings.cache_dir)
        batch = pipeline.run_batch(jobs)
        single = [pipeline.run_batch([j])[0] for j in jobs[:2]]
    finally:
        pipeline.close()
    counts = [len(o.result.faces) for o in batch]  # type: ignore[union-attr]
    assert 1 <= counts[0] < expected[0]  # the group photo: the cascade misses faces at 400 px
    assert counts[1] == 1  # the astronaut
    boxes = [[f.box for f in o.result.faces] for o in batch[:2]]  # type: ignore[union-attr]
    assert [[f.box for f in o.result.faces] for o in single] == boxes  # type: ignore[union-attr]


def test_blazeface_takes_gray_frames_too(settings: Settings) -> None:
    """A camera sending 1-channel images: decoded to BGR (replicated), the face is still found."""
    pipeline = _pipeline(settings, "blazeface")
    try:
        _, astronaut, _ = face_test_photos(settings.cache_dir)[1]
        gray_png = cv2.imencode(".png", cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))[1].tobytes()
        (outcome,) = pipeline.run_batch([FrameJob(Frame("cam-pipe", 0, 0, "png", gray_png), time.monotonic())])
    finally:
        pipeline.close()
    assert outcome.result is not None and len(outcome.result.faces) == 1
    assert outcome.crops[0].ndim == 2  # FER gets gray crops
