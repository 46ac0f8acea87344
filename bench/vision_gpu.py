"""Vision on each serving device: ``python -m bench.vision_gpu --json`` prints one JSON object.

For ``cpu`` and, when torch sees one, ``cuda``, with the default detector (BlazeFace full +
short range) and the edge FER model, all through the agent's own ``run_batch``:

- ``fps_by_batch``: frames/s of ``run_batch`` (JPEG decode + letterbox on the CPU, detection
  and FER on the device) at batch 1 / 16 / 64.
- ``stage_ms_per_frame``: at batch 64, per frame: JPEG decode (CPU), letterbox (the
  detector's ``prepare`` + ``to_batch``: OpenCV, or on the device), both networks (``forward``, input
  already letterboxed), the whole ``detect_batch``, crop + FER.
- ``detect_nets_fps``: ``forward`` alone on a letterboxed batch, frames/s at batch 1 / 16 /
  64 / 256: what the device could do with the CPU work taken away.
- On CUDA, ``cuda`` is the agent's default (resize on the GPU, CUDA graphs);
  ``cuda_no_graphs`` and ``cuda_cpu_resize_no_graphs`` take each of those away.
- ``fer_crops_per_s``: the FER network alone at batch 1 / 16 / 64 / 256.
- ``faces_found`` on the test photos, and ``boxes_match_cpu``: every box found on the device
  has a CPU box with IoU >= 0.9 and the counts agree.

No broker is involved (the GPU machines have no Mosquitto): end-to-end figures come from
``bench.vision``. CPU figures depend on the machine's core count (``cpu_cores``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from common.settings import Settings, load_settings
from devices.camera import face_test_photos, photo_frames
from inference.images import decode_bgr
from inference.vision import FrameJob, VisionPipeline, build_vision_pipeline
from models.blazeface import BlazeFaceDetector, load_blazeface
from models.face_detect import Box
from models.fer_edge import preprocess_faces
from topics.vision import Frame


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[], object], items: int, device: torch.device, min_s: float = 1.0) -> float:
    """Items/s of ``step`` (one warm-up call, then repeated for at least ``min_s``)."""
    step()
    _sync(device)
    done, t0 = 0, time.perf_counter()
    while True:
        step()
        done += items
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s and done >= 64:
            return done / elapsed


def _iou(a: Box, b: Box) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0, min(ax1, bx1) - max(a[0], b[0])), max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1)


def measure_device(settings: Settings, device: str, images: list[bytes], reference: list[list[Box]] | None,
                   resize_on_device: bool | None = None, cuda_graphs: bool = True,
                   ) -> tuple[dict[str, object], list[list[Box]]]:
    """Every figure for one device and detector variant (the defaults are the agent's)."""
    s = settings.model_copy(update={"edge": settings.edge.model_copy(update={"device": device})})
    pipeline: VisionPipeline = build_vision_pipeline(s)
    dev = torch.device(device)
    out: dict[str, object] = {}
    try:
        default = pipeline.detector
        assert isinstance(default, BlazeFaceDetector)
        if resize_on_device is not None or not cuda_graphs:
            default.close()
            pipeline.detector = load_blazeface(s.cache_dir, device=device, workers=s.vision.detect_workers,
                                               min_face_px=s.vision.min_face_px, max_faces=s.vision.max_faces,
                                               resize_on_device=resize_on_device, cuda_graphs=cuda_graphs)
        detector = pipeline.detector
        assert isinstance(detector, BlazeFaceDetector)
        out["resize_on_device"] = detector.resize_on_device
        out["cuda_graphs"] = detector.cuda_graphs
        frames = [Frame("bench", i, 0, "jpeg", images[i % len(images)]) for i in range(64)]
        out["fps_by_batch"] = {
            str(bs): round(_rate(lambda bs=bs: pipeline.run_batch(  # type: ignore[misc]
                [FrameJob(f, time.monotonic()) for f in frames[:bs]]), bs, dev), 1)
            for bs in (1, 16, 64)
        }

        # stages at batch 64
        bgr = [decode_bgr(f.data, f.encoding, s.vision.max_image_pixels) for f in frames]
        n = len(frames)
        t0 = time.perf_counter()
        for f in frames:
            decode_bgr(f.data, f.encoding, s.vision.max_image_pixels)
        decode_ms = (time.perf_counter() - t0) * 1e3 / n
        prepare_rate = _rate(lambda: detector.to_batch([detector.prepare(i) for i in bgr]), n, dev)
        batch = detector.to_batch([detector.prepare(i) for i in bgr])
        nets_rate = _rate(lambda: detector.forward(batch), n, dev)
        detect_rate = _rate(lambda: detector.detect_batch(bgr), n, dev)
        outcomes = pipeline.run_batch([FrameJob(f, time.monotonic()) for f in frames])
        crops = [c for o in outcomes for c in o.crops]
        model = pipeline.slot.current().model
        fer_rate = _rate(lambda: model.predict(preprocess_faces(crops)), n, dev) if crops else 0.0
        out["stage_ms_per_frame"] = {
            "jpeg_decode": round(decode_ms, 3),
            "letterbox": round(1e3 / prepare_rate, 3),
            "detect_nets": round(1e3 / nets_rate, 3),
            "detect_batch": round(1e3 / detect_rate, 3),
            "crop_fer": round(1e3 / fer_rate, 3) if fer_rate else None,
            "faces_per_frame": round(len(crops) / n, 2),
        }
        out["detect_nets_fps"] = {}
        for bs in (1, 16, 64, 256):
            x = batch[torch.arange(bs, device=batch.device) % n]
            out["detect_nets_fps"][str(bs)] = round(  # type: ignore[index]
                _rate(lambda x=x: detector.forward(x), bs, dev), 1)  # type: ignore[misc]
        rng = np.random.default_rng(0)
        fer_in = preprocess_faces([rng.integers(0, 255, (96, 96), dtype=np.uint8) for _ in range(256)])
        out["fer_crops_per_s"] = {str(bs): round(_rate(lambda bs=bs: model.predict(fer_in[:bs]), bs, dev), 1)  # type: ignore[misc]
                                  for bs in (1, 16, 64, 256)}

        photos = face_test_photos(s.cache_dir)
        found = detector.detect_batch([p for _, p, _ in photos])
        out["faces_found"] = {name: f"{len(b)}/{k}" for (name, _, k), b in zip(photos, found)}
        if reference is not None:
            out["boxes_match_cpu"] = all(
                len(a) == len(b) and all(max((_iou(x, y) for y in b), default=0.0) >= 0.9 for x in a)
                for a, b in zip(found, reference))
        out["graph_error"] = detector.graph_error
    finally:
        pipeline.close()
    return out, found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when absent")
    args = p.parse_args(argv)
    settings = load_settings()
    images = photo_frames(settings.cache_dir)
    out: dict[str, object] = {"cpu_cores": os.cpu_count(), "torch": torch.__version__,
                               "torch_threads": settings.vision.torch_threads,
                               "detect_workers": settings.vision.detect_workers}
    reference: list[list[Box]] | None = None
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            out["cuda"] = "not available"
            continue
        figures, found = measure_device(settings, device, images, reference)
        if device == "cuda":
            figures["gpu"] = torch.cuda.get_device_name(0)
            # the same device without each GPU measure: frames resized by OpenCV, eager launches
            out["cuda_cpu_resize_no_graphs"], _ = measure_device(settings, device, images, reference,
                                                                 resize_on_device=False, cuda_graphs=False)
            out["cuda_no_graphs"], _ = measure_device(settings, device, images, reference, cuda_graphs=False)
        if reference is None:
            reference = found
        out[device] = figures
    if not args.json:
        print(__doc__)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
