"""The vision pipeline: frame bytes -> faces -> facial expressions, one batch at a time.

:meth:`VisionPipeline.preprocess` is one frame's work that needs no batch: decode, and the
detector's own per-frame step (BlazeFace: the letterbox). The agent runs it in a small
thread pool as each frame arrives (OpenCV releases the GIL), so a batch's critical path
is only the batched work. :meth:`VisionPipeline.run_batch` is what the dynamic batcher
runs in its worker thread: frames not preprocessed yet are preprocessed first (in the
pool), then the detector finds the faces of *all* frames in one call (BlazeFace: one
batched forward pass per model on the serving device; Haar: frames in parallel threads),
then one FER forward pass runs over every face crop of the batch, on the version the
model slot serves when the batch starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from common.settings import Settings, VisionSettings
from inference.images import decode_bgr, decode_gray
from inference.model_slot import Loaded, ModelSlot
from models.artifacts import path_of
from models.blazeface import load_blazeface
from models.face_detect import BatchDetector, Box, FaceDetector, HaarBatchDetector
from models.face_fallback import CascadeFallback
from models.fer_crop import FerCropGeometry, FerCropper
from models.fer_edge import FerClassifier, load_edge_fer, preprocess_faces, resolve_device
from topics.codec import ContractError
from topics.vision import EMOTIONS, Face, Frame, ModelRef, Timing, VisionResult

__all__ = ["FrameJob", "FrameOutcome", "Preprocessed", "VisionPipeline", "build_fer_cropper", "build_vision_pipeline"]


@dataclass(slots=True)
class Preprocessed:
    """A frame after :meth:`VisionPipeline.preprocess`: the detector's input and the gray
    image FER crops come from, or the error that stopped it."""

    prepared: Any  # what this detector's ``prepare`` made of the image
    gray: np.ndarray | None
    ms: float
    error: ContractError | None = None
    image: np.ndarray | None = None  # the decoded BGR image, kept only for the cascade fallback


@dataclass(slots=True)
class FrameJob:
    """A decoded envelope waiting for the model. ``received_s`` is ``time.monotonic()``;
    ``pre`` is set when the frame was preprocessed before its batch.

    ``admitted_s`` / ``predicted_s``: when admission control let it in and the completion time (s
    from then) it predicted, before any bias correction; None without admission control."""

    frame: Frame
    received_s: float
    pre: Preprocessed | None = None
    admitted_s: float | None = None
    predicted_s: float | None = None


@dataclass(slots=True)
class FrameOutcome:
    """Either a result (with the face crops and probabilities, for hard-example mining) or an error."""

    job: FrameJob
    result: VisionResult | None = None
    error: ContractError | None = None
    crops: list[np.ndarray] = field(default_factory=list)
    probs: np.ndarray | None = None


class VisionPipeline:
    """Decode, detect, classify. Thread-safe for one caller at a time (the batcher)."""

    def __init__(
        self,
        detector: BatchDetector[Any],
        slot: ModelSlot[FerClassifier],
        settings: VisionSettings,
        node: str,
        cropper: FerCropper,
        fallback: CascadeFallback | None = None,
    ) -> None:
        self.detector = detector
        self.fallback = fallback
        self.cropper = cropper
        self.slot = slot
        self.settings = settings
        self.node = node
        self._pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="vision-pre")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.detector.close()

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The preprocessing threads (``vision.preprocess_threads``)."""
        return self._pool

    def preprocess(self, frame: Frame) -> Preprocessed:
        """Decode one frame and run the detector's per-frame step; errors are returned, not raised."""
        t0 = time.perf_counter()
        try:
            if self.detector.color:
                image = decode_bgr(frame.data, frame.encoding, self.settings.max_image_pixels)
                gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            else:
                image = gray = decode_gray(frame.data, frame.encoding, self.settings.max_image_pixels)
            prepared = self.detector.prepare(image)
        except ContractError as exc:
            return Preprocessed(None, None, (time.perf_counter() - t0) * 1e3, exc)
        return Preprocessed(prepared, gray, (time.perf_counter() - t0) * 1e3,
                            image=image if self.fallback is not None else None)

    def run_batch(self, jobs: Sequence[FrameJob]) -> list[FrameOutcome]:
        """Process a batch of frames; one outcome per job, in order."""
        batch_start = time.monotonic()
        missing = [j.frame for j in jobs if j.pre is None]
        if len(missing) <= 1 or self.settings.preprocess_threads == 1:
            made = iter([self.preprocess(f) for f in missing])
        else:
            made = iter(list(self._pool.map(self.preprocess, missing)))
        decoded = [j.pre if j.pre is not None else next(made) for j in jobs]
        t0 = time.perf_counter()
        ok = [d for d in decoded if d.error is None]
        found = iter(self.detector.detect_prepared([d.prepared for d in ok]))
        boxes: list[list[Box]] = [next(found) if d.error is None else [] for d in decoded]
        if self.fallback is not None:
            for d, b in zip(decoded, boxes):
                if d.image is not None and d.gray is not None and len(b) < self.settings.max_faces:
                    b += self.fallback.find(d.image, d.gray, b)[: self.settings.max_faces - len(b)]
        detect_ms = (time.perf_counter() - t0) * 1e3
        crops = [self.cropper.crops(d.gray, b) if d.gray is not None else [] for d, b in zip(decoded, boxes)]
        loaded = self.slot.current()  # this batch runs to its end on this version
        all_crops = [c for frame_crops in crops for c in frame_crops]
        t0 = time.perf_counter()
        if all_crops:
            probs = loaded.model.predict(preprocess_faces(all_crops))
        else:
            probs = np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        inference_ms = (time.perf_counter() - t0) * 1e3
        model = ModelRef(name=loaded.name, version=loaded.version)

        outcomes: list[FrameOutcome] = []
        offset = 0
        for job, dec, frame_boxes, frame_crops in zip(jobs, decoded, boxes, crops):
            if dec.error is not None:
                outcomes.append(FrameOutcome(job=job, error=dec.error))
                continue
            frame_probs = probs[offset:offset + len(frame_crops)]
            offset += len(frame_crops)
            faces = tuple(
                Face(box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])), label=EMOTIONS[int(np.argmax(p))],
                     probs=tuple(float(x) for x in p))
                for box, p in zip(frame_boxes, frame_probs)
            )
            done = time.monotonic()
            timing = Timing(
                queue_ms=(batch_start - job.received_s) * 1e3,
                batch_size=len(jobs),
                preprocess_ms=dec.ms + detect_ms,  # this frame's preprocessing + the batch's detection
                inference_ms=inference_ms,
                total_ms=(done - job.received_s) * 1e3,
            )
            result = VisionResult(
                device=job.frame.device, seq=job.frame.seq, captured_at_ms=job.frame.captured_at_ms,
                node=self.node, model=model, timing=timing, faces=faces, case_id=job.frame.case_id,
            )
            outcomes.append(FrameOutcome(job=job, result=result, crops=frame_crops, probs=frame_probs))
        return outcomes


def build_vision_pipeline(settings: Settings) -> VisionPipeline:
    """Load the face detector (``vision.detector``) and the edge FER model from the artifact cache."""
    torch.set_num_threads(settings.vision.torch_threads)
    v = settings.vision
    detector: BatchDetector
    fallback: CascadeFallback | None = None
    if v.detector == "blazeface":
        ranges = ("full", "short") if v.blazeface_short_range else ("full",)
        detector = load_blazeface(settings.cache_dir, device=resolve_device(settings.edge.device),
                                  ranges=ranges, min_face_px=v.min_face_px, max_faces=v.max_faces,
                                  workers=v.detect_workers, tiles=v.blazeface_tiles)
        if detector.device.type == "cuda":
            detector.warm_up(v.max_batch_size)
        if v.cascade_fallback:
            fallback = CascadeFallback(path_of("fer", "haarcascade_frontalface_default.xml", settings.cache_dir),
                                       detector, v.min_face_px)
    else:
        cascade = path_of("fer", "haarcascade_frontalface_default.xml", settings.cache_dir)

        def make_detector() -> FaceDetector:
            return FaceDetector(cascade, max_side=v.detect_max_side, scale_factor=v.detect_scale_factor,
                                min_neighbors=v.detect_min_neighbors, min_face_px=v.min_face_px,
                                max_faces=v.max_faces)

        detector = HaarBatchDetector(make_detector, v.preprocess_threads, v.cv_threads)

    fer = load_edge_fer(settings.cache_dir, device=settings.edge.device)
    slot: ModelSlot[FerClassifier] = ModelSlot(Loaded(fer, fer.name, fer.version))
    return VisionPipeline(detector, slot, v, settings.edge.node_name, build_fer_cropper(settings), fallback)


def build_fer_cropper(settings: Settings) -> FerCropper:
    """The FER crop of ``vision.fer_crop``, with fer's cascade from the artifact cache."""
    c = settings.vision.fer_crop
    cascade = path_of("fer", "haarcascade_frontalface_default.xml", settings.cache_dir) if c.refine else None
    return FerCropper(cascade, FerCropGeometry(c.scale, c.dx, c.dy), refine=c.refine)
