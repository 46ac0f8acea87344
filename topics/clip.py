"""Audio clips of final transcript segments, kept by the archive so that an operator can play a segment.

Opt-in at the edge (``speech.publish_clips``, off by default). When on, the edge publishes the audio of
each finished utterance on :func:`topics.names.audio_clip` (QoS 1), keyed like its segment by
(conversation, leg, utterance), with the conversation's ``case_id`` and the ``device`` that sent the
audio. The audio is what the ASR heard: 16 kHz mono signed 16-bit little-endian PCM (32 kB a second),
at most :data:`MAX_CLIP_S` seconds (longer utterances are cut). Clips are sensitive media: they travel
outside ``results/`` so result readers (``tail``) never receive them; only the edge agent writes them and
only the archive reads them (compose/mosquitto.acl).
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass

import numpy as np

from topics.codec import ContractError, field, opt_case, pack, unpack
from topics.names import check_id

__all__ = ["CLIP_VERSION", "SAMPLE_RATE", "ENCODING", "MAX_CLIP_S", "AudioClip", "encode_clip", "decode_clip",
           "clip_from_samples", "wav_bytes"]

CLIP_VERSION = 1
SAMPLE_RATE = 16000
ENCODING = "pcm_s16le"
MAX_CLIP_S = 30.0
_MAX_PCM = int(MAX_CLIP_S * SAMPLE_RATE) * 2
_MAX_BYTES = _MAX_PCM + 4096


@dataclass(frozen=True, slots=True)
class AudioClip:
    """One utterance's audio; ``start_s``/``end_s`` on the conversation clock, like its segment."""

    conversation: str
    leg: str
    utterance: int
    start_s: float
    end_s: float
    pcm: bytes  # 16 kHz mono int16 little-endian
    case_id: str | None = None
    device: str | None = None
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


def clip_from_samples(conversation: str, leg: str, utterance: int, start_s: float, samples: np.ndarray, *,
                      case_id: str | None = None, device: str | None = None,
                      max_s: float = MAX_CLIP_S) -> AudioClip:
    """A clip of float samples in [-1, 1] at 16 kHz (cut at ``max_s`` seconds)."""
    n = int(min(max_s, MAX_CLIP_S) * SAMPLE_RATE)
    pcm = (np.clip(np.asarray(samples[:n], dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    return AudioClip(conversation, leg, utterance, start_s, start_s + len(pcm) / 2 / SAMPLE_RATE, pcm,
                     case_id=case_id, device=device)


def encode_clip(c: AudioClip) -> bytes:
    check_id(c.conversation, "conversation")
    check_id(c.leg, "leg")
    if len(c.pcm) > _MAX_PCM or len(c.pcm) % 2:
        raise ValueError(f"clip of {len(c.pcm)} bytes: at most {_MAX_PCM}, whole int16 samples")
    return pack("audio_clip", CLIP_VERSION, {
        "conversation": c.conversation, "leg": c.leg, "utterance": c.utterance,
        "start_s": round(c.start_s, 3), "end_s": round(c.end_s, 3), "sample_rate": c.sample_rate,
        "encoding": ENCODING, "audio": c.pcm, "case_id": c.case_id, "device": c.device})


def decode_clip(payload: bytes) -> AudioClip:
    """Decode and validate a clip; :class:`ContractError` if it breaks the contract."""
    obj = unpack(payload, "audio_clip", frozenset({CLIP_VERSION}), _MAX_BYTES)
    conversation, leg = field(obj, "conversation", str), field(obj, "leg", str)
    device = obj.get("device")
    try:
        check_id(conversation, "conversation")
        check_id(leg, "leg")
        if device is not None:
            check_id(device, "device")
    except ValueError as exc:
        raise ContractError("bad_field", str(exc)) from None
    utterance = field(obj, "utterance", int)
    if utterance < 0:
        raise ContractError("bad_field", f"utterance {utterance} < 0")
    start, end = float(field(obj, "start_s", (int, float))), float(field(obj, "end_s", (int, float)))
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        raise ContractError("bad_field", f"start_s {start}, end_s {end}")
    if field(obj, "sample_rate", int) != SAMPLE_RATE or field(obj, "encoding", str) != ENCODING:
        raise ContractError("bad_field", f"audio must be {ENCODING} at {SAMPLE_RATE} Hz")
    pcm = field(obj, "audio", bytes)
    if not pcm or len(pcm) % 2 or len(pcm) > _MAX_PCM:
        raise ContractError("bad_field", f"audio of {len(pcm)} bytes (1..{_MAX_PCM}, whole int16 samples)")
    return AudioClip(conversation, leg, utterance, start, end, pcm, case_id=opt_case(obj), device=device)


def wav_bytes(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A RIFF/WAVE file of mono int16 PCM (what an ``<audio>`` element plays)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()
