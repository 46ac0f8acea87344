"""topics/: names, envelopes, validation, and no collision with what edgecore routes itself."""

from __future__ import annotations

import json

import msgpack
import pytest

from topics import names
from topics.codec import ContractError
from topics.dc import HardExample, decode_hard_example, encode_hard_example
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


def _audio_example(**kw: object) -> HardExample:
    base: dict[str, object] = dict(
        device="tap-1", model="whisper-vocab", model_version="v1", kind="audio", seq=3, item=0,
        encoding="pcm_s16le", data=bytes(range(256)) * 250, result="neither did i", confidences=(0.4,),
        reasons=("low_confidence",), node="node-1", captured_at_ms=5, stream="call-7.a", sample_rate=16000)
    base.update(kw)
    return HardExample(**base)  # type: ignore[arg-type]


def test_hard_example_carries_its_lead_and_tail_audio() -> None:
    ex = _audio_example(lead_s=0.5, tail_s=0.25)  # 64000 bytes: 2 s, 0.5 s before, 0.25 s after
    back = decode_hard_example(encode_hard_example(ex))
    assert back == ex and (back.lead_s, back.tail_s) == (0.5, 0.25)
    assert back.utterance_data == ex.data[16000:-8000]
    assert _audio_example().utterance_data == _audio_example().data  # no context: the data itself
    with pytest.raises(ValueError):  # the context leaves no utterance
        encode_hard_example(_audio_example(lead_s=1.0, tail_s=1.0))
    with pytest.raises(ValueError):
        encode_hard_example(_audio_example(lead_s=-0.1))
    with pytest.raises(ValueError):  # a face crop has no neighbouring audio
        encode_hard_example(_audio_example(kind="face", encoding="png", sample_rate=None, lead_s=0.1))
    obj = msgpack.unpackb(encode_hard_example(ex), raw=False)
    for bad in ({"lead_s": -1.0}, {"tail_s": "x"}, {"lead_s": 1.5, "tail_s": 0.6}, {"tail_s": float("nan")}):
        with pytest.raises(ContractError):
            decode_hard_example(msgpack.packb({**obj, **bad}, use_bin_type=True))


def test_hard_example_v1_still_decodes_without_context() -> None:
    obj = msgpack.unpackb(encode_hard_example(_audio_example()), raw=False)
    del obj["lead_s"], obj["tail_s"]
    v1 = decode_hard_example(msgpack.packb({**obj, "v": 1}, use_bin_type=True))
    assert v1 == _audio_example() and (v1.lead_s, v1.tail_s) == (0.0, 0.0)
    with pytest.raises(ContractError):
        decode_hard_example(msgpack.packb({**obj, "v": 3}, use_bin_type=True))
