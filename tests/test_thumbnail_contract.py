"""Camera thumbnails (topics.thumbnail, inference.images.thumbnail_jpeg): made small, round trip, bad input refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.images import thumbnail_jpeg
from topics import names
from topics.codec import ContractError, pack
from topics.thumbnail import MAX_THUMBNAIL_BYTES, Thumbnail, decode_thumbnail, encode_thumbnail


def _jpeg(w: int, h: int) -> bytes:
    image = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def test_a_thumbnail_is_small_and_round_trips() -> None:
    frame = _jpeg(1280, 720)
    jpeg, w, h, fw, fh = thumbnail_jpeg(frame, "jpeg", 16_000_000, 160)
    assert (w, h, fw, fh) == (160, 90, 1280, 720)
    assert len(jpeg) < min(len(frame) // 10, MAX_THUMBNAIL_BYTES)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (90, 160, 3)
    t = Thumbnail("cam-1", 7, w, h, fw, fh, jpeg, case_id="case-a")
    assert decode_thumbnail(encode_thumbnail(t)) == t
    assert thumbnail_jpeg(_jpeg(100, 50), "jpeg", 16_000_000, 160)[1:3] == (100, 50)  # never enlarged
    assert names.thumbnail("cam-1") == "offload/v1/thumbs/cam-1"
    assert not names.matches(names.RESULTS_FILTER, names.thumbnail("cam-1"))  # tail never sees images


def test_bad_images_and_thumbnails_are_refused() -> None:
    with pytest.raises(ContractError):
        thumbnail_jpeg(b"\xff\xd8\xffjunk", "jpeg", 16_000_000, 160)
    good = {"device": "cam-1", "seq": 0, "width": 4, "height": 4, "frame_width": 8, "frame_height": 8,
            "jpeg": b"\xff\xd8\xff" + b"\x00" * 10, "case_id": None}
    decode_thumbnail(pack("thumbnail", 1, good))
    for bad in ({"jpeg": b"\x89PNG"}, {"width": 0}, {"seq": -1}, {"device": "a/b"}, {"case_id": "#"}):
        with pytest.raises(ContractError):
            decode_thumbnail(pack("thumbnail", 1, {**good, **bad}))
