"""Case ids in the contract: frames v4, vision results v3, segments v3 and partials v2 carry
``case_id``; the previous versions still decode, with case_id None."""

from __future__ import annotations

import msgpack
import pytest

from topics.codec import ContractError
from topics.transcript import (
    ModelRef,
    PartialTranscript,
    TranscriptSegment,
    TranscriptWord,
    decode_partial,
    decode_segment,
    encode_partial,
    encode_segment,
)
from topics.vision import (
    Frame,
    Timing,
    VisionResult,
    decode_frame,
    decode_result,
    encode_frame,
    encode_result,
    shed_result,
)

SEG = TranscriptSegment(conversation="call-7", leg="leg1", utterance=3, seq=5, speaker="S2", start_s=1.0, end_s=2.0,
                        text="roger", confidence=0.9, words=(TranscriptWord("roger", 1.0, 2.0, 0.9),),
                        model=ModelRef("m", "v"), latency_ms=10.0, revision=1, source="dc", case_id="case-42",
                        device="tap-1")
PART = PartialTranscript(conversation="call-7", leg="leg1", utterance=3, seq=1, speaker="?", provisional=True,
                         text="rog", start_s=1.0, updated_at_ms=5, case_id="case-42")


def _rewrite(payload: bytes, **changes: object) -> bytes:
    obj = msgpack.unpackb(payload, raw=False)
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return msgpack.packb(obj, use_bin_type=True)


def test_segments_and_partials_carry_the_case() -> None:
    assert decode_segment(encode_segment(SEG)) == SEG
    assert decode_partial(encode_partial(PART)) == PART
    assert msgpack.unpackb(encode_segment(SEG))["v"] == 3
    assert msgpack.unpackb(encode_partial(PART))["v"] == 2


def test_previous_speech_versions_decode_without_a_case() -> None:
    old_seg = _rewrite(encode_segment(SEG), v=2, case_id=None)
    assert decode_segment(old_seg).case_id is None
    assert decode_segment(old_seg).revision == 1
    assert decode_partial(_rewrite(encode_partial(PART), v=1, case_id=None)).case_id is None


@pytest.mark.parametrize("bad", ["", "a/b", "+", "x" * 65, 7])
def test_a_bad_case_id_is_rejected(bad: object) -> None:
    with pytest.raises(ContractError) as err:
        decode_segment(_rewrite(encode_segment(SEG), case_id=bad))
    assert err.value.reason in ("bad_field", "missing_field")


def test_frames_and_results_carry_the_case() -> None:
    frame = Frame(device="cam-1", seq=3, captured_at_ms=1, encoding="jpeg", data=b"\xff\xd8", case_id="case-42")
    wire = encode_frame(frame)
    assert msgpack.unpackb(wire)["v"] == 4
    assert decode_frame(wire, 1 << 20) == frame
    plain = Frame(device="cam-1", seq=3, captured_at_ms=1, encoding="jpeg", data=b"\xff\xd8")
    assert msgpack.unpackb(encode_frame(plain))["v"] == 2  # older edges still read a frame without a case
    assert decode_frame(encode_frame(plain), 1 << 20).case_id is None
    result = VisionResult(device="cam-1", seq=3, captured_at_ms=1, node="edge-1", model=ModelRef("fer", "v1"),
                          timing=Timing(1.0, 1, 1.0, 1.0, 3.0), case_id="case-42")
    assert decode_result(encode_result(result)) == result
    assert decode_result(_rewrite(encode_result(result), v=2, case_id=None)).case_id is None
    assert shed_result(frame, "edge-1", ModelRef("fer", "v1"), "deadline", 5.0).case_id == "case-42"
    with pytest.raises(ValueError):
        encode_frame(Frame(device="cam-1", seq=3, captured_at_ms=1, encoding="jpeg", data=b"x", case_id="a/b"))
