"""The torch BlazeFace port against the shipped tflite files run by ai-edge-litert, on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from devices.camera import face_test_photos
from models.artifacts import path_of
from models.blazeface import (
    FULL_RANGE,
    SHORT_RANGE,
    BlazeFaceDetector,
    BlazeSpec,
    decode_boxes,
    letterbox,
    load_blazeface,
    load_blazeface_net,
    square_tiles,
    ssd_anchors,
    trace_net,
    weighted_nms,
)
from models.face_detect import Box

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def photos(cache_dir: Path) -> list[tuple[str, np.ndarray, int]]:
    return face_test_photos(cache_dir)


def _oracle(cache_dir: Path, spec: BlazeSpec, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, int, int]]:
    """(regressors (A, 16), logits (A,), letterbox geometry) from the tflite file itself."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path_of("blazeface", spec.filename, cache_dir)))
    it.allocate_tensors()
    square, scale, px, py = letterbox(bgr, spec.input_size)
    x = square[:, :, ::-1].astype(np.float32) / 127.5 - 1.0  # RGB in [-1, 1], NHWC
    it.set_tensor(it.get_input_details()[0]["index"], x[None])
    it.invoke()
    out = {d["shape"][-1]: it.get_tensor(d["index"])[0].copy() for d in it.get_output_details()}
    return out[16], out[1][:, 0], (scale, px, py)


def _oracle_boxes(cache_dir: Path, spec: BlazeSpec, bgr: np.ndarray) -> list[Box]:
    """The oracle's raw outputs through the same anchors / threshold / NMS (one model)."""
    reg, logit, (scale, px, py) = _oracle(cache_dir, spec, bgr)
    score = (1.0 / (1.0 + np.exp(-np.clip(logit.astype(np.float64), -100, 100)))).astype(np.float32)
    keep = score >= spec.min_score
    b = decode_boxes(reg[keep], ssd_anchors(spec)[keep], spec.input_size) * spec.input_size
    b = (b - np.array([px, py, px, py])) / scale
    boxes, _ = weighted_nms(b.astype(np.float32), score[keep])
    h, w = bgr.shape[:2]
    boxes = np.clip(np.round(boxes), 0, [w, h, w, h]).astype(int)  # clipped to the image, as ours are
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes.tolist()]


@pytest.mark.parametrize("spec", [FULL_RANGE, SHORT_RANGE], ids=["full", "short"])
def test_raw_outputs_match_tflite(cache_dir: Path, photos: list, spec: BlazeSpec) -> None:
    net = load_blazeface_net(path_of("blazeface", spec.filename, cache_dir))
    anchors = ssd_anchors(spec)
    for name, bgr, _ in photos:
        reg, logit, _ = _oracle(cache_dir, spec, bgr)
        assert reg.shape == (len(anchors), 16) and logit.shape == (len(anchors),)
        square, _, _, _ = letterbox(bgr, spec.input_size)
        x = torch.from_numpy(square[:, :, ::-1].astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            ours_reg, ours_logit = net(x.contiguous())
        # Same float16 weights dequantised to float32 on both sides: measured max 1.6e-4.
        np.testing.assert_allclose(ours_reg[0].numpy(), reg, atol=2e-3, err_msg=name)
        np.testing.assert_allclose(ours_logit[0, :, 0].numpy(), logit, atol=2e-3, err_msg=name)


@pytest.mark.parametrize("spec", [FULL_RANGE, SHORT_RANGE], ids=["full", "short"])
def test_boxes_match_tflite_oracle(cache_dir: Path, photos: list, spec: BlazeSpec) -> None:
    ranges = ("full",) if spec is FULL_RANGE else ("short",)
    detector = load_blazeface(cache_dir, ranges=ranges, min_face_px=1)
    found_any = 0
    for name, bgr, _ in photos:
        theirs = _oracle_boxes(cache_dir, spec, bgr)
        ours = detector.detect(bgr)
        assert len(ours) == len(theirs), (name, ours, theirs)
        for box in ours:
            assert max(_iou(box, t) for t in theirs) >= 0.9, (name, box, theirs)
        found_any += len(ours)
    assert found_any >= 3  # not trivially agreeing on "no faces"


def test_anchors_cover_the_output_rows() -> None:
    full, short = ssd_anchors(FULL_RANGE), ssd_anchors(SHORT_RANGE)
    assert full.shape == (48 * 48, 2)  # stride 4 on 192 px, 1 anchor a cell
    assert short.shape == (16 * 16 * 2 + 8 * 8 * 6, 2)  # strides 8, 16, 16, 16; 2 a layer
    assert np.allclose(full[:2], [[0.5 / 48, 0.5 / 48], [1.5 / 48, 0.5 / 48]])  # row-major x first
    assert np.allclose(short[0], short[1]) and np.allclose(short[512:518], short[512])
    assert full.min() > 0 and full.max() < 1 and short.min() > 0 and short.max() < 1


def test_faces_found_in_every_size(cache_dir: Path, photos: list) -> None:
    """The merged detector finds 6/6 in the group photo, 1 in the astronaut and in each close-up."""
    detector = load_blazeface(cache_dir)
    found = detector.detect_batch([bgr for _, bgr, _ in photos])
    assert [len(f) for f in found] == [n for _, _, n in photos], [(p[0], f) for p, f in zip(photos, found)]
    for (name, bgr, _), boxes in zip(photos, found):
        h, w = bgr.shape[:2]
        for x, y, bw, bh in boxes:
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h, name
    # Why both models: full range misses a frame-filling face, short range misses the far ones.
    full = load_blazeface(cache_dir, ranges=("full",))
    short = load_blazeface(cache_dir, ranges=("short",))
    group = photos[0][1]
    close_ups = [bgr for name, bgr, _ in photos if name.startswith("close-up")]
    assert len(short.detect(group)) == 0
    assert sum(len(f) == 0 for f in full.detect_batch(close_ups)) >= 1
    assert all(len(f) == 1 for f in short.detect_batch(close_ups))


def test_batch_equals_single_and_gray_input(cache_dir: Path, photos: list) -> None:
    detector = load_blazeface(cache_dir, chunk=2)
    images = [bgr for _, bgr, _ in photos]
    batch = detector.detect_batch(images)
    assert batch == [detector.detect(img) for img in images]
    threaded = load_blazeface(cache_dir, chunk=2, workers=2)
    try:
        assert threaded.detect_batch(images) == batch  # (model, chunk) pieces in 2 threads
    finally:
        threaded.close()
    assert detector.detect_batch([]) == []
    gray = cv2.cvtColor(photos[1][1], cv2.COLOR_BGR2GRAY)  # the astronaut
    assert len(detector.detect(gray)) == 1
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError):
        load_blazeface(cache_dir, ranges=("medium",))


def test_traced_net_equals_the_eager_graph_at_any_batch_size(cache_dir: Path) -> None:
    for spec in (FULL_RANGE, SHORT_RANGE):
        net = load_blazeface_net(path_of("blazeface", spec.filename, cache_dir))
        traced = trace_net(net, spec.input_size, torch.device("cpu"))  # traced at batch 2
        for n in (1, 3):
            x = torch.rand(n, 3, spec.input_size, spec.input_size) * 2 - 1
            with torch.inference_mode():
                for a, b in zip(net(x), traced(x)):
                    assert a.shape[0] == n
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_weighted_nms_blends_a_cluster_and_keeps_separate_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.6], np.float32)
    out, out_scores = weighted_nms(boxes, scores)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[0], (boxes[0] * 0.9 + boxes[1] * 0.3) / 1.2, rtol=1e-6)
    np.testing.assert_allclose(out[1], boxes[2])
    np.testing.assert_allclose(out_scores, [0.9, 0.6])
    empty, empty_scores = weighted_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


def test_letterbox_maps_points_back() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255
    square, scale, px, py = letterbox(img, 192)
    assert square.shape == (192, 192, 3) and scale == pytest.approx(0.96) and px == 0 and py == 48
    ys, xs = np.nonzero(square[:, :, 0] > 127)
    assert abs((xs.mean() - px) / scale - 100) < 1 and abs((ys.mean() - py) / scale - 50) < 1


def test_detector_refuses_bad_arguments(cache_dir: Path) -> None:
    net = load_blazeface_net(path_of("blazeface", SHORT_RANGE.filename, cache_dir))
    with pytest.raises(ValueError):
        BlazeFaceDetector([])
    with pytest.raises(ValueError):
        BlazeFaceDetector([(SHORT_RANGE, net)], chunk=0)


def test_letterbox_on_the_device_finds_the_same_faces(cache_dir: Path, photos: list) -> None:
    """The GPU path's resize (torch, antialiased bilinear) against OpenCV's, run here on the CPU."""
    images = [bgr for _, bgr, _ in photos] + [cv2.cvtColor(photos[1][1], cv2.COLOR_BGR2GRAY)]
    on_cpu = load_blazeface(cache_dir).detect_batch(images)
    detector = load_blazeface(cache_dir, resize_on_device=True)
    on_device = detector.detect_batch(images)
    assert [len(b) for b in on_device] == [len(b) for b in on_cpu] == [n for _, _, n in photos] + [1]
    for ours, theirs in zip(on_device, on_cpu):
        for box in ours:
            assert max(_iou(box, t) for t in theirs) >= 0.9, (box, theirs)
    prepared = detector.prepare(images[0])
    assert not prepared.boxed and prepared.pixels is images[0]  # resized later, with its batch
    square = detector.to_batch([prepared])
    assert square.shape == (1, 3, 192, 192) and square.dtype == torch.float32
    assert float(square.min()) >= 0 and float(square.max()) <= 255
    h, w = images[0].shape[:2]
    assert prepared.geo[0] == pytest.approx(192 / max(h, w)) and prepared.hw == (h, w)
    cpu = load_blazeface(cache_dir).prepare(images[0])
    assert cpu.boxed and cpu.pixels.shape == (192, 192, 3) and cpu.geo == prepared.geo


def test_square_tiles_cover_a_wide_or_tall_frame_with_overlap() -> None:
    assert square_tiles(1080, 1920) == [(0, 0, 1080), (840, 0, 1080)]
    assert square_tiles(484, 280) == [(0, 0, 280), (0, 204, 280)]
    assert square_tiles(512, 2048) == [(0, 0, 512), (512, 0, 512), (1024, 0, 512), (1536, 0, 512)]
    assert square_tiles(512, 512) == [] and square_tiles(480, 590) == []  # within 1.25 of square
    for h, w in ((480, 640), (532, 1562), (1000, 300)):
        tiles = square_tiles(h, w)
        cover = np.zeros((h, w), bool)
        for x, y, side in tiles:
            assert side == min(h, w) and x + side <= w and y + side <= h
            cover[y:y + side, x:x + side] = True
        assert cover.all() and len(tiles) == -(-max(h, w) // min(h, w))


def test_tiles_find_a_face_small_relative_to_a_wide_frame(cache_dir: Path, photos: list) -> None:
    """The astronaut (a 96 px face in 512x512) in a 2048x512 strip: letterboxed whole, the face
    reaches the full-range model at 9 px and is not found; its 512 px tile brings it to 36 px."""
    astronaut = photos[1][1]
    (face,) = load_blazeface(cache_dir).detect(astronaut)
    strip = np.full((512, 2048, 3), 128, np.uint8)
    strip[:, :512] = astronaut
    where = face
    plain = load_blazeface(cache_dir).detect(strip)
    assert plain == [], plain
    tiled = load_blazeface(cache_dir, tiles=True)
    found = tiled.detect(strip)
    assert max(_iou(b, where) for b in found) >= 0.9, (found, where)
    prepared = tiled.prepare(strip)
    assert [t.offset for t in prepared.tiles] == [(0, 0), (512, 0), (1024, 0), (1536, 0)]
    assert tiled.prepare(astronaut).tiles == ()  # a square frame is not tiled
    assert tiled.detect_batch([strip, astronaut]) == [found, tiled.detect(astronaut)]  # batched as alone
    on_device = load_blazeface(cache_dir, tiles=True, resize_on_device=True).detect(strip)  # tiles are views
    assert max(_iou(b, where) for b in on_device) >= 0.9, on_device
