"""Contract v2 for offloading: frame deadlines, result placement/outcome, status load."""

from __future__ import annotations

import msgpack
import pytest

from topics.codec import ContractError
from topics.status import EdgeLoad, EdgeStatus, decode_status, encode_status
from topics.vision import (
    Face,
    Frame,
    ModelRef,
    Timing,
    VisionResult,
    decode_frame,
    decode_result,
    encode_frame,
    encode_result,
    shed_result,
)

FRAME = Frame("cam-1", 3, 1000, "jpeg", b"\xff\xd8x", deadline_ms=1500, latest_wins=True)
MODEL = ModelRef("fer", "v1")
TIMING = Timing(1.0, 2, 3.0, 4.0, 8.0)


def test_frame_deadline_and_latest_wins_round_trip() -> None:
    assert decode_frame(encode_frame(FRAME), 1 << 20) == FRAME


def test_v1_frame_still_decodes_without_deadline() -> None:
    payload = msgpack.packb({"type": "frame", "v": 1, "device": "cam-1", "seq": 1, "captured_at_ms": 5,
                             "encoding": "jpeg", "size": 1, "data": b"x"}, use_bin_type=True)
    frame = decode_frame(payload, 1 << 20)
    assert frame.deadline_ms is None and frame.latest_wins is False


def test_result_placement_round_trip_and_shed() -> None:
    served = VisionResult("cam-1", 3, 1000, "edge-1", MODEL, TIMING,
                          (Face((1, 2, 3, 4), "happy", (0.1,) * 6 + (0.4,)),), served_by="dc")
    assert decode_result(encode_result(served)) == served
    shed = shed_result(FRAME, "edge-1", MODEL, "deadline", 12.5)
    back = decode_result(encode_result(shed))
    assert (back.outcome, back.served_by, back.shed_reason, back.faces) == ("shed", "none", "deadline", ())


def test_v1_result_decodes_as_served_at_the_edge() -> None:
    obj = msgpack.unpackb(encode_result(VisionResult("cam-1", 3, 1000, "e", MODEL, TIMING)))
    obj["v"] = 1
    for key in ("outcome", "served_by", "shed_reason"):
        del obj[key]
    back = decode_result(msgpack.packb(obj, use_bin_type=True))
    assert (back.outcome, back.served_by, back.shed_reason) == ("served", "edge", None)


@pytest.mark.parametrize("fields", [
    {"outcome": "lost"},
    {"served_by": "moon"},
    {"outcome": "shed", "served_by": "none", "shed_reason": None},
    {"outcome": "served", "served_by": "edge", "shed_reason": "deadline"},
    {"outcome": "shed", "served_by": "edge", "shed_reason": "deadline"},
])
def test_inconsistent_placement_is_a_contract_error(fields: dict[str, object]) -> None:
    obj = msgpack.unpackb(encode_result(VisionResult("cam-1", 3, 1000, "e", MODEL, TIMING)))
    obj.update(fields)
    with pytest.raises(ContractError):
        decode_result(msgpack.packb(obj, use_bin_type=True))


def test_inconsistent_result_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        VisionResult("cam-1", 3, 1000, "e", MODEL, TIMING, outcome="shed", served_by="edge", shed_reason="x")


def test_status_load_round_trip_and_v1_status() -> None:
    st = EdgeStatus("edge-1", True, 5, {"fer": "v1"},
                    EdgeLoad(queue_delay_ms=12.5, service_ms={"fer": 4.25}, utilisation=0.5,
                             capacity_per_s=235.0, queue_depth=3))
    assert decode_status(encode_status(st)) == st
    v1 = msgpack.packb({"type": "edge_status", "v": 1, "node": "n", "online": True, "at_ms": 1, "models": {}})
    assert decode_status(v1).load is None


def test_status_bad_load_is_a_contract_error() -> None:
    obj = msgpack.unpackb(encode_status(EdgeStatus("n", True, 1, {}, EdgeLoad(1.0, {"fer": 1.0}, 0.1, 9.0))))
    obj["load"]["service_ms"] = {"fer": "fast"}
    with pytest.raises(ContractError):
        decode_status(msgpack.packb(obj))


def test_dc_request_and_reply_round_trip() -> None:
    from topics.offload import (
        DcReply,
        DcRequest,
        decode_dc_reply,
        decode_dc_request,
        encode_dc_reply,
        encode_dc_request,
    )

    req = DcRequest("r1", "edge-1", 7, FRAME, 1500)
    assert decode_dc_request(encode_dc_request(req)) == req
    ok = DcReply("r1", "edge-1", result=VisionResult("cam-1", 3, 1000, "dc-1", MODEL, TIMING, served_by="dc"))
    assert decode_dc_reply(encode_dc_reply(ok)) == ok
    err = DcReply("r1", "edge-1", error="bad_image")
    assert decode_dc_reply(encode_dc_reply(err)) == err
    obj = msgpack.unpackb(encode_dc_reply(err))
    obj["error"] = None
    with pytest.raises(ContractError):
        decode_dc_reply(msgpack.packb(obj))
    obj = msgpack.unpackb(encode_dc_request(req))
    obj["reply_to"] = "a/b"
    with pytest.raises(ContractError):
        decode_dc_request(msgpack.packb(obj))


def test_fallback_frame_is_v3_and_a_plain_frame_stays_v2() -> None:
    from dataclasses import replace

    fallback = replace(FRAME, fallback=True)
    assert decode_frame(encode_frame(fallback), 1 << 20) == fallback
    assert msgpack.unpackb(encode_frame(fallback))["v"] == 3
    assert msgpack.unpackb(encode_frame(FRAME))["v"] == 2  # older edges still read frames without it
    assert decode_frame(encode_frame(FRAME), 1 << 20).fallback is False


def test_frame_return_round_trip_and_validation() -> None:
    from topics import names
    from topics.offload import FrameReturn, decode_frame_return, encode_frame_return

    ret = FrameReturn("cam-1", 3, 1000, "edge-1", "deadline", 1200)
    assert decode_frame_return(encode_frame_return(ret)) == ret
    assert not names.matches(names.RESULTS_FILTER, names.frame_returns("cam-1"))  # never read as an outcome
    assert not names.routed_by_edgecore(names.frame_returns("cam-1"))
    bad = msgpack.packb({"type": "frame_return", "v": 1, "device": "../x", "seq": 1, "captured_at_ms": 1,
                         "node": "e", "reason": "deadline", "at_ms": 1})
    with pytest.raises(ContractError):
        decode_frame_return(bad)
    with pytest.raises(ContractError):
        decode_frame_return(encode_frame(FRAME))
