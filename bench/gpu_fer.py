"""FER on whatever accelerator is here: ``python -m bench.gpu_fer --data DIR --json``.

Prints one JSON object: for each device (cpu, and cuda when present) the edge FER
network's inference throughput per batch size, its agreement with CPU outputs, and one
fine-tuning round of the DC (``cloud_trainer.fer_train.fine_tune``) on teacher-labelled
shifted-domain crops: seconds and holdout agreement with the teacher before and after.

``--make-data DIR`` (run where the artifacts and OpenCV's cascade are) writes the crops,
their teacher labels and the edge weights into DIR, so the check can run on a machine
that has neither.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cloud_trainer.fer_train import LabelledCrop, agreement, fine_tune
from common.trainer_settings import FerTrainSettings
from models.fer_edge import FerClassifier, load_keras_hdf5, preprocess_faces


def make_data(folder: Path, n_frames: int = 400) -> None:
    import cv2

    from bench.shifted_domain import FaceSources, make_frames
    from common.settings import load_settings
    from models.face_detect import FaceDetector
    from models.fer_teacher import load_teacher

    cache = load_settings().cache_dir
    folder.mkdir(parents=True, exist_ok=True)
    sources = FaceSources.load(cache)
    detector = FaceDetector(max_side=640, min_face_px=24)
    crops: list[np.ndarray] = []
    for frame in make_frames(sources, n_frames, seed=11, device="gpu-check"):
        gray = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_GRAYSCALE)
        for x, y, w, h in detector.detect(gray)[:2]:
            crops.append(cv2.resize(gray[y:y + h, x:x + w], (64, 64), interpolation=cv2.INTER_AREA))
    labels = load_teacher(cache, "cpu").predict(crops).argmax(axis=1)
    np.savez_compressed(folder / "crops.npz", crops=np.stack(crops), labels=labels)
    shutil.copy(cache / "fer" / "emotion_model.hdf5", folder / "emotion_model.hdf5")
    print(f"wrote {len(crops)} crops to {folder}")


def _throughput(clf: FerClassifier, x: np.ndarray, bs: int, seconds: float = 1.0) -> float:
    batch = x[:bs] if len(x) >= bs else np.repeat(x, bs // len(x) + 1, axis=0)[:bs]
    clf.predict(batch)
    if str(clf.device).startswith("cuda"):
        torch.cuda.synchronize()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        clf.predict(batch)  # returns numpy: includes the copy back, as the edge pays it
        done += bs
    return done / (time.perf_counter() - t0)


def run(folder: Path) -> dict[str, object]:
    data = np.load(folder / "crops.npz")
    crops = [c for c in data["crops"]]
    labels = [int(v) for v in data["labels"]]
    samples = [LabelledCrop(c, lab) for c, lab in zip(crops, labels)]
    split = int(len(samples) * 0.7)
    train, holdout = samples[:split], samples[split:]
    base = load_keras_hdf5(folder / "emotion_model.hdf5")
    x = preprocess_faces(crops)
    cpu_probs = FerClassifier(base, device="cpu").predict(x)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: dict[str, object] = {"crops": len(crops), "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for device in devices:
        clf = FerClassifier(base, device=device)
        probs = clf.predict(x)
        rates = {str(bs): round(_throughput(clf, x, bs), 1) for bs in (1, 16, 64, 256)}
        settings = FerTrainSettings(epochs=4, device=device)
        t0 = time.perf_counter()
        tuned, report = fine_tune(base, train, [], settings, seed=0)
        out[device] = {
            "max_abs_diff_vs_cpu": float(np.abs(probs - cpu_probs).max()),
            "argmax_agreement_vs_cpu": float((probs.argmax(1) == cpu_probs.argmax(1)).mean()),
            "crops_per_s": rates,
            "batching_gain_16": round(rates["16"] / rates["1"], 2),
            "fine_tune_seconds": round(time.perf_counter() - t0, 2),
            "fine_tune_final_loss": round(report.final_loss, 4),
            "holdout_agreement_before": round(agreement(base, holdout), 3),
            "holdout_agreement_after": round(agreement(tuned, holdout), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=Path(".gpu"))
    p.add_argument("--make-data", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.make_data:
        make_data(args.data)
        return 0
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    print(json.dumps(run(args.data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
