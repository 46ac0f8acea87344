"""The edge node mines finished utterances: low-confidence utterances put their audio in the outbox."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.dc_settings import FilterSpec, HardExampleSettings, ModelMiningSettings, OutboxSettings
from common.settings import Settings
from edge_agent.app import EdgeNode
from edge_agent.hard_examples import HardExampleReporter, speech_pcm
from edge_agent.mining import MiningPolicy
from edge_agent.outbox import Outbox
from edge_agent.speech.pipeline import Utterance
from models.whisper_asr import AsrResult, Word
from topics import names
from topics.dc import decode_hard_example
from topics.vision import ModelRef

ASR = "whisper-vocab"


def _utterance(n: int, confidence: float, lead_s: float = 0.0, tail_s: float = 0.0) -> Utterance:
    words = (Word("medevac", 0.1, 0.6, confidence), Word("requested", 0.6, 1.1, confidence))
    samples = (np.sin(np.arange(16000) / 10.0) * 0.3).astype(np.float32)
    return Utterance(leg="leg1", utterance=n, start_s=1.0, end_s=2.0,
                     result=AsrResult("medevac requested", words, confidence), samples=samples,
                     end_arrival_s=0.0, model=ModelRef("whisper-tiny.en", "w+vocab.base"),
                     lead=np.full(int(lead_s * 16000), -0.5, np.float32),
                     tail=np.full(int(tail_s * 16000), 0.5, np.float32))


def test_uncertain_utterances_go_to_the_outbox(tmp_path: Path) -> None:
    node = EdgeNode(Settings())
    mining = HardExampleSettings(models={ASR: ModelMiningSettings(
        filters=[FilterSpec(kind="threshold", threshold=0.8)], rate_per_device_s=50, burst_per_device=50)})
    outbox = Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"))
    node.reporter = HardExampleReporter(MiningPolicy(mining), outbox, "node-1")
    topic = names.audio("tap-3", "call-9", "leg1")
    try:
        node.mine_speech(topic, _utterance(0, 0.95))  # confident: stays on the edge
        node.mine_speech(topic, _utterance(1, 0.40))  # uncertain: goes to the DC
        rows = outbox.peek(10)
    finally:
        outbox.close()
    assert len(rows) == 1
    ex = decode_hard_example(rows[0].payload)
    assert (ex.kind, ex.device, ex.stream, ex.seq, ex.model) == ("audio", "tap-3", "call-9.leg1", 1, ASR)
    assert ex.result == "medevac requested" and ex.sample_rate == 16000
    assert len(ex.data) == 2 * 16000  # s16le PCM of the utterance
    assert ex.confidences == (0.4,)  # the segment's calibrated confidence
    assert ex.model_version == "w+vocab.base"


def test_a_speech_hard_example_carries_the_audio_around_the_utterance(tmp_path: Path) -> None:
    node = EdgeNode(Settings())
    mining = HardExampleSettings(models={ASR: ModelMiningSettings(
        filters=[FilterSpec(kind="threshold", threshold=0.8)], rate_per_device_s=50, burst_per_device=50)})
    outbox = Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"))
    node.reporter = HardExampleReporter(MiningPolicy(mining), outbox, "node-1")
    try:
        node.mine_speech(names.audio("tap-3", "call-9", "leg1"), _utterance(2, 0.4, lead_s=1.0, tail_s=0.25))
        rows = outbox.peek(10)
    finally:
        outbox.close()
    ex = decode_hard_example(rows[0].payload)
    assert (ex.lead_s, ex.tail_s) == (1.0, 0.25)
    pcm = np.frombuffer(ex.data, "<i2")
    assert len(pcm) == 16000 + 16000 + 4000
    assert (pcm[:16000] == -16383).all() and (pcm[-4000:] == 16383).all()  # lead, then utterance, then tail
    assert ex.utterance_data == ex.data[32000:-8000] and len(ex.utterance_data) == 2 * 16000


def test_the_context_shrinks_to_keep_an_example_under_the_kafka_limit() -> None:
    speech, lead, tail = np.zeros(1000, np.float32), np.ones(800, np.float32), np.ones(300, np.float32)
    pcm, lead_s, tail_s = speech_pcm(speech, lead, tail, 1000, max_bytes=2 * 1600)
    assert len(pcm) == 2 * 1600 and (lead_s, tail_s) == (0.3, 0.3)  # the room shared, the utterance whole
    pcm, lead_s, tail_s = speech_pcm(speech, lead, tail[:100], 1000, max_bytes=2 * 1600)
    assert (lead_s, tail_s) == (0.5, 0.1)  # a short tail leaves its share to the lead
    pcm, lead_s, tail_s = speech_pcm(speech, lead, tail, 1000, max_bytes=2 * 900)
    assert len(pcm) == 2 * 1000 and (lead_s, tail_s) == (0.0, 0.0)  # no room: the utterance alone
