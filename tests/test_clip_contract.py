"""The audio-clip contract (topics.clip): round trip, cut at the limit, bad input refused, WAV output."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from topics import names
from topics.clip import MAX_CLIP_S, SAMPLE_RATE, clip_from_samples, decode_clip, encode_clip, wav_bytes
from topics.codec import ContractError, pack


def test_round_trip_and_wav() -> None:
    samples = np.sin(np.linspace(0, 200, SAMPLE_RATE // 2)).astype(np.float32) * 0.5
    clip = clip_from_samples("call-1", "caller", 3, 1.25, samples, case_id="case-a", device="tap-1")
    assert clip.duration_s == 0.5 and clip.end_s == 1.75
    back = decode_clip(encode_clip(clip))
    assert back == clip
    assert names.audio_clip("call-1") == "offload/v1/clips/call-1"
    assert names.matches(names.CLIPS_FILTER, names.audio_clip("call-1"))
    assert not names.matches(names.RESULTS_FILTER, names.audio_clip("call-1"))  # tail never sees audio
    with wave.open(io.BytesIO(wav_bytes(back.pcm))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, SAMPLE_RATE, 8000)
        pcm = np.frombuffer(w.readframes(8000), dtype="<i2")
    assert np.max(np.abs(pcm / 32767.0 - samples)) < 1e-4


def test_long_utterances_are_cut() -> None:
    clip = clip_from_samples("c", "l", 0, 0.0, np.zeros(int(SAMPLE_RATE * (MAX_CLIP_S + 5)), np.float32))
    assert clip.duration_s == MAX_CLIP_S
    assert clip_from_samples("c", "l", 0, 0.0, np.zeros(SAMPLE_RATE * 5, np.float32), max_s=2).duration_s == 2.0


@pytest.mark.parametrize("fields, reason", [
    ({"audio": b""}, "bad_field"),
    ({"audio": b"\x00"}, "bad_field"),  # half a sample
    ({"sample_rate": 8000}, "bad_field"),
    ({"conversation": "a/b"}, "bad_field"),
    ({"case_id": "+"}, "bad_field"),
    ({"end_s": -1.0}, "bad_field"),
    ({"utterance": "1"}, "bad_field"),
])
def test_bad_clips_are_refused(fields: dict[str, object], reason: str) -> None:
    good = {"conversation": "c", "leg": "l", "utterance": 0, "start_s": 0.0, "end_s": 0.1, "sample_rate": SAMPLE_RATE,
            "encoding": "pcm_s16le", "audio": b"\x00\x00" * 10, "case_id": None, "device": None}
    decode_clip(pack("audio_clip", 1, good))
    with pytest.raises(ContractError) as err:
        decode_clip(pack("audio_clip", 1, {**good, **fields}))
    assert err.value.reason == reason
    with pytest.raises(ContractError, match="oversize"):
        decode_clip(pack("audio_clip", 1, {**good, "audio": b"\x00" * (SAMPLE_RATE * 2 * 31)}))
