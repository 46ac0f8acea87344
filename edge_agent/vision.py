"""The vision pipeline: frame bytes -> faces -> facial expressions, one batch at a time.

:meth:`VisionPipeline.run_batch` is what the dynamic batcher runs in its worker thread:
decode + face detection per frame in a small thread pool (OpenCV releases the GIL), then
one FER forward pass over every face crop of the batch, on the version the model slot
serves when the batch starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_agent.images import decode_gray
from edge_agent.model_slot import ModelSlot
from edge_offload.settings import VisionSettings
from models.face_detect import FaceDetector, crop_faces
from models.fer_edge import FerClassifier, preprocess_faces
from topics.codec import ContractError
from topics.vision import EMOTIONS, Face, Frame, ModelRef, Timing, VisionResult

__all__ = ["FrameJob", "FrameOutcome", "VisionPipeline"]


@dataclass(slots=True)
class FrameJob:
    """A decoded envelope waiting for the model. ``received_s`` is ``time.monotonic()``."""

    frame: Frame
    received_s: float


@dataclass(slots=True)
class FrameOutcome:
    """Either a result (with the face crops and probabilities, for hard-example mining) or an error."""

    job: FrameJob
    result: VisionResult | None = None
    error: ContractError | None = None
    crops: list[np.ndarray] = field(default_factory=list)
    probs: np.ndarray | None = None


@dataclass(slots=True)
class _Prepared:
    boxes: list[tuple[int, int, int, int]]
    crops: list[np.ndarray]
    preprocess_ms: float
    error: ContractError | None = None


class VisionPipeline:
    """Decode, detect, classify. Thread-safe for one caller at a time (the batcher)."""

    def __init__(
        self,
        make_detector: Callable[[], FaceDetector],
        slot: ModelSlot[FerClassifier],
        settings: VisionSettings,
        node: str,
    ) -> None:
        # OpenCV's CascadeClassifier is not thread-safe: one detector per worker thread.
        self._make_detector = make_detector
        self._local = threading.local()
        self.slot = slot
        self.settings = settings
        self.node = node
        self._pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="vision-pre")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def prepare(self, frame: Frame) -> _Prepared:
        """Decode and find faces in one frame; errors are returned, not raised."""
        t0 = time.perf_counter()
        try:
            gray = decode_gray(frame.data, frame.encoding, self.settings.max_image_pixels)
            detector = getattr(self._local, "detector", None)
            if detector is None:
                detector = self._local.detector = self._make_detector()
            boxes = detector.detect(gray)
            crops = crop_faces(gray, boxes)
        except ContractError as exc:
            return _Prepared([], [], (time.perf_counter() - t0) * 1e3, exc)
        return _Prepared(list(boxes), crops, (time.perf_counter() - t0) * 1e3)

    def run_batch(self, jobs: Sequence[FrameJob]) -> list[FrameOutcome]:
        """Process a batch of frames; one outcome per job, in order."""
        batch_start = time.monotonic()
        if len(jobs) == 1 or self.settings.preprocess_threads == 1:
            # One frame: OpenCV's own threads split the detection scales (lowest latency).
            cv2.setNumThreads(self.settings.cv_threads)
            prepared = [self.prepare(j.frame) for j in jobs]
        else:
            # Several frames: one frame per pool thread, OpenCV single-threaded (best throughput).
            cv2.setNumThreads(1)
            prepared = list(self._pool.map(self.prepare, [j.frame for j in jobs]))
        loaded = self.slot.current()  # this batch runs to its end on this version
        all_crops = [c for p in prepared for c in p.crops]
        t0 = time.perf_counter()
        if all_crops:
            probs = loaded.model.predict(preprocess_faces(all_crops))
        else:
            probs = np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        inference_ms = (time.perf_counter() - t0) * 1e3
        model = ModelRef(name=loaded.name, version=loaded.version)

        outcomes: list[FrameOutcome] = []
        offset = 0
        for job, prep in zip(jobs, prepared):
            if prep.error is not None:
                outcomes.append(FrameOutcome(job=job, error=prep.error))
                continue
            frame_probs = probs[offset:offset + len(prep.crops)]
            offset += len(prep.crops)
            faces = tuple(
                Face(box=tuple(int(v) for v in box), label=EMOTIONS[int(np.argmax(p))],
                     probs=tuple(float(x) for x in p))  # type: ignore[arg-type]
                for box, p in zip(prep.boxes, frame_probs)
            )
            done = time.monotonic()
            timing = Timing(
                queue_ms=(batch_start - job.received_s) * 1e3,
                batch_size=len(jobs),
                preprocess_ms=prep.preprocess_ms,
                inference_ms=inference_ms,
                total_ms=(done - job.received_s) * 1e3,
            )
            result = VisionResult(
                device=job.frame.device, seq=job.frame.seq, captured_at_ms=job.frame.captured_at_ms,
                node=self.node, model=model, timing=timing, faces=faces,
            )
            outcomes.append(FrameOutcome(job=job, result=result, crops=prep.crops, probs=frame_probs))
        return outcomes
