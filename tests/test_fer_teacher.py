"""The DC teacher (facial_emotion_recognition NetworkV2) loads and agrees with the edge model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.fer_edge import load_edge_fer, preprocess_faces
from models.fer_teacher import TEACHER_CLASSES, TeacherFer, load_teacher, preprocess_teacher
from tests._face_crops import real_crops
from topics.vision import EMOTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(cache_dir: Path) -> TeacherFer:
    return load_teacher(cache_dir, device="cpu")


def test_teacher_size_and_distributions(teacher: TeacherFer, cache_dir: Path) -> None:
    assert sum(p.numel() for p in teacher.network.parameters()) == 2_750_151
    probs = teacher.predict(list(real_crops(cache_dir)[:8]))
    assert probs.shape == (8, len(EMOTIONS)) and probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert teacher.predict([]).shape == (0, 7)


def test_teacher_columns_follow_emotions_order(teacher: TeacherFer, cache_dir: Path) -> None:
    crops = list(real_crops(cache_dir)[:4])
    with torch.inference_mode():
        scores = teacher.network(torch.from_numpy(preprocess_teacher(crops))).numpy()
    probs = teacher.predict(crops)
    for j, emotion in enumerate(EMOTIONS):
        k = [c.lower() for c in TEACHER_CLASSES].index(emotion)
        expected = scores[:, k] / scores.sum(1)
        np.testing.assert_allclose(probs[:, j], expected, rtol=1e-4, atol=1e-6)


def test_teacher_agrees_with_edge_model_on_most_real_faces(teacher: TeacherFer, cache_dir: Path) -> None:
    crops = list(real_crops(cache_dir))
    t = teacher.predict(crops).argmax(1)
    e = load_edge_fer(cache_dir, device="cpu").predict(preprocess_faces(crops)).argmax(1)
    agree = float(np.mean(t == e))
    # Measured 0.71 on these 72 crops (both mostly say "happy"; they part on fear/neutral).
    assert agree >= 0.6, agree
    assert EMOTIONS.index("happy") in set(t.tolist())
