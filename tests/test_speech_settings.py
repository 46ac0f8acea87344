"""Speech tuning (jitter buffer, VAD, diarizer, pipeline) is read from the environment and reaches the legs."""

from __future__ import annotations

import numpy as np
import pytest

from common.settings import load_settings
from edge_agent.speech.pipeline import StepOutput
from edge_agent.speech.service import SpeechEngine
from models.vad import SileroVad
from topics import g711, names
from topics.rtp import build_rtp

FRAME = 160  # 20 ms at 8 kHz


class _UnusedAsr:
    """Silence never reaches the recogniser; the leg only reads the model's name."""

    name = "unused"
    version = "0"


class _UnusedEncoder:
    """Silence gives no segment to embed."""


def _packet(seq: int, k: int) -> bytes:
    return build_rtp(g711.encode("pcmu", np.zeros(FRAME, np.int16)), payload_type=0, sequence=seq,
                     timestamp=5000 + k * FRAME, ssrc=0x1234)


def test_nested_speech_sections_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_OFFLOAD_SPEECH__JITTER__LATENCY_S", "0.2")
    monkeypatch.setenv("EDGE_OFFLOAD_SPEECH__PIPELINE__VAD__THRESHOLD", "0.6")
    monkeypatch.setenv("EDGE_OFFLOAD_SPEECH__PIPELINE__DIARIZER__LEG_BONUS", "0.1")
    monkeypatch.setenv("EDGE_OFFLOAD_SPEECH__PIPELINE__HOLD_MAX_S", "3")
    speech = load_settings().speech
    assert speech.jitter.latency_s == 0.2 and speech.jitter.max_packets == 64
    assert speech.pipeline.vad.threshold == 0.6 and speech.pipeline.vad.off_threshold == pytest.approx(0.45)
    assert speech.pipeline.diarizer.leg_bonus == 0.1 and speech.pipeline.hold_max_s == 3.0


def test_an_unknown_jitter_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_OFFLOAD_SPEECH__JITTER__LATENCY", "0.2")
    with pytest.raises(ValueError, match="EDGE_OFFLOAD_SPEECH__JITTER__LATENCY"):
        load_settings()


@pytest.mark.parametrize("max_seq_jump, rejected", [(None, {}), ("5", {"seq_jump": 1})])
async def test_jitter_setting_from_the_environment_reaches_the_leg(
        monkeypatch: pytest.MonkeyPatch, max_seq_jump: str | None, rejected: dict[str, int]) -> None:
    # A packet 11 sequence numbers ahead fits the default jitter buffer (it waits for the hole to
    # fill); with max_seq_jump=5 it does not fit the stream and is rejected.
    if max_seq_jump is not None:
        monkeypatch.setenv("EDGE_OFFLOAD_SPEECH__JITTER__MAX_SEQ_JUMP", max_seq_jump)
    settings = load_settings()

    async def sink(out: StepOutput, topic: str) -> None:
        pass

    engine = SpeechEngine(vad=SileroVad(), encoder=_UnusedEncoder(), asr=_UnusedAsr(),  # type: ignore[arg-type]
                          sink=sink, config=settings.speech)
    topic = names.audio("dev", "call", "leg1")
    order = list(range(10)) + [20] + list(range(10, 20))
    for i, k in enumerate(order):
        assert engine.submit(topic, _packet(1000 + k, k), 100.0 + i * 0.02)
    await engine.close()
    assert engine.counters.packets_rejected == rejected
