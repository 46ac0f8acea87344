"""topics/: names, envelopes, validation, and no collision with what edgecore routes itself."""

from __future__ import annotations

import json

import msgpack
import pytest

from topics import names
from topics.codec import ContractError
from topics.deadletter import DeadLetter, decode_dead_letter, encode_dead_letter
from topics.kubeedge import device_data_topic, device_data_update, twin_update, twin_update_topic
from topics.status import EdgeStatus, decode_status, encode_status
from topics.vision import (
    EMOTIONS,
    Face,
    Frame,
    ModelRef,
    Timing,
    VisionResult,
    decode_frame,
    decode_result,
    encode_frame,
    encode_result,
)


def test_media_topics_never_match_edgecore_routes() -> None:
    ours = [
        names.frames("cam-1"), names.audio("tap-1", "call-7", "a"), names.vision_results("cam-1"),
        names.transcript("call-7"), names.partial_transcript("call-7"), names.dead_letter("vision"),
        names.edge_status("node-1"), names.FRAMES_FILTER, names.AUDIO_FILTER, names.RESULTS_FILTER,
    ]
    for topic in ours:
        assert not names.routed_by_edgecore(topic), topic
    # ... while the KubeEdge device topics are exactly what edgecore consumes
    assert names.routed_by_edgecore(twin_update_topic("default", "cam-1"))
    assert names.routed_by_edgecore("$hw/events/upload/x")
    assert names.routed_by_edgecore("app/user/anything")


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "cam 1", "x" * 65, "-lead"])
def test_ids_that_would_break_a_topic_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        names.frames(bad)


def test_filter_matching() -> None:
    assert names.matches(names.FRAMES_FILTER, names.frames("cam-1"))
    assert not names.matches(names.FRAMES_FILTER, names.audio("cam-1", "c", "l"))
    assert names.matches(names.RESULTS_FILTER, names.transcript("c"))
    assert names.shared("g", names.FRAMES_FILTER) == "$share/g/offload/v1/frames/+"
    assert names.device_of(names.audio("tap-9", "c", "l")) == "tap-9"


def test_frame_round_trip_and_validation() -> None:
    frame = Frame("cam-1", 7, 1234, "jpeg", b"\xff\xd8\xffdata", 640, 480)
    assert decode_frame(encode_frame(frame), 1 << 20) == frame
    with pytest.raises(ContractError) as err:
        decode_frame(encode_frame(frame), 8)
    assert err.value.reason == "oversize"
    tampered = msgpack.unpackb(encode_frame(frame))
    tampered["size"] = 3
    with pytest.raises(ContractError) as err:
        decode_frame(msgpack.packb(tampered, use_bin_type=True), 1 << 20)
    assert err.value.reason == "bad_field"
    tampered["size"], tampered["encoding"] = len(frame.data), "gif"
    with pytest.raises(ContractError) as err:
        decode_frame(msgpack.packb(tampered, use_bin_type=True), 1 << 20)
    assert err.value.reason == "bad_encoding"
    tampered["encoding"], tampered["seq"] = "jpeg", True  # bool is not an int here
    with pytest.raises(ContractError):
        decode_frame(msgpack.packb(tampered, use_bin_type=True), 1 << 20)


def test_result_round_trip() -> None:
    probs = (0.01, 0.01, 0.02, 0.9, 0.02, 0.02, 0.02)
    result = VisionResult("cam-1", 3, 99, "node-1", ModelRef("fer", "v2"), Timing(1.5, 4, 3.0, 2.0, 9.5),
                          (Face((1, 2, 30, 40), "happy", probs),))
    back = decode_result(encode_result(result))
    assert back == result
    assert back.faces[0].confidence == pytest.approx(0.9)
    assert len(EMOTIONS) == 7


def test_dead_letter_keeps_a_bounded_copy() -> None:
    dl = DeadLetter("vision", "bad_image", "nope", names.frames("c"), b"x" * 100_000, 100_000, "n", 5)
    back = decode_dead_letter(encode_dead_letter(dl))
    assert back.payload_size == 100_000 and len(back.payload) == 64 * 1024
    assert back.reason == "bad_image"


def test_status_round_trip() -> None:
    st = EdgeStatus("node-1", True, 5, {"fer": "v1"})
    assert decode_status(encode_status(st)) == st


def test_kubeedge_json_formats() -> None:
    twin = json.loads(twin_update({"status": "online", "fps": 5.0, "frames_sent": 3}, 1000))
    assert twin["timestamp"] == 1000 and twin["event_id"]
    assert twin["twin"]["status"] == {"actual": {"value": "online"}, "metadata": {"type": "string"}}
    assert twin["twin"]["frames_sent"]["metadata"]["type"] == "int"
    data = json.loads(device_data_update({"battery": 81}, 2000))
    assert data["data"]["battery"] == {"value": "81", "metadata": {"timestamp": 2000, "type": "int"}}
    assert twin_update_topic("ns", "cam-1") == "$hw/events/device/ns/cam-1/twin/update"
    assert device_data_topic("cam-1") == "$ke/events/device/cam-1/data/update"


def test_payload_bytes_and_now_ms() -> None:
    import time

    from topics.codec import now_ms, payload_bytes

    assert payload_bytes(b"\x00\xff") == b"\x00\xff"
    assert payload_bytes(bytearray(b"ab")) == b"ab" and type(payload_bytes(bytearray(b"ab"))) is bytes
    assert payload_bytes(None) == b""
    assert payload_bytes("é") == "é".encode() and payload_bytes(7) == b"7"
    before = int(time.time() * 1000)
    assert before <= now_ms() <= int(time.time() * 1000)


def test_audio_topics_are_built_and_parsed_in_names() -> None:
    import pytest

    from topics import names
    from topics.codec import ContractError

    assert names.parse_audio(names.audio("dev-1", "conv-2", "leg-a")) == ("dev-1", "conv-2", "leg-a")
    for bad, reason in ((f"{names.ROOT}/frames/dev", "bad_topic"), (f"{names.ROOT}/audio/dev/conv", "bad_topic"),
                        (f"{names.ROOT}/audio/dev/conv/", "bad_leg_id")):
        with pytest.raises(ContractError) as err:
            names.parse_audio(bad)
        assert err.value.reason == reason
