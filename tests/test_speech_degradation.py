"""Overload: partials thin out first, finals wait but always come, then new legs are refused
(``edge_agent.speech.governor``), through the real engine with real VAD and Whisper."""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydantic
import pytest

from common.speech_settings import DegradationConfig
from devices.audio import packetize
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.governor import LoadGovernor, available_cpus
from edge_agent.speech.pipeline import ConversationTracker, LegStream, PipelineConfig, StepOutput
from edge_agent.speech.service import SpeechEngine, SpeechServiceConfig
from models.edge_asr import EdgeAsr, load_edge_asr
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from sim.scoring import wer
from sim.speech_corpus import SENTENCES, VOICES, espeak_available, synthesize, telephone, to_8k_int16
from topics import names

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


def test_the_governor_gives_up_partials_before_it_refuses_legs() -> None:
    gov = LoadGovernor(DegradationConfig(thin_above_s=0.25, partials_off_above_s=0.8, refuse_legs_above_s=1.5,
                                         smoothing=1.0))
    gov.observe(0.05)
    assert gov.partial_every_s(0.5) == 0.5 and gov.admits_new_leg()
    gov.observe(0.5)  # thinning: a longer cadence, legs still admitted
    assert 0.5 < gov.partial_every_s(0.5) < 2.0 and gov.admits_new_leg()
    gov.observe(1.0)  # partials off, legs still admitted
    assert gov.partial_every_s(0.5) == math.inf and gov.admits_new_leg()
    gov.observe(2.0)  # new legs refused
    assert not gov.admits_new_leg() and gov.peak_lag_s == 2.0
    gov.observe(0.0)  # recovered
    assert gov.partial_every_s(0.5) == 0.5 and gov.admits_new_leg()
    assert gov.partial_is_stale(gov.config.stale_partial_s + 0.01) and not gov.partial_is_stale(0.05)


def test_partials_thin_out_with_cpu_use_over_its_target_before_any_lag() -> None:
    gov = LoadGovernor(DegradationConfig(cpu_target=0.5, cpus=2.0, smoothing=1.0))
    gov.observe_cpu(100.0, 1000.0)
    gov.observe_cpu(100.5, 1000.5)  # under a second: no reading yet
    assert gov.cpu_use == 0.0 and gov.partial_every_s(0.5) == 0.5
    gov.observe_cpu(100.8, 1001.0)  # 0.8 CPU-s in 1 s on 2 CPUs: 40 %, under the target
    assert gov.cpu_use == pytest.approx(0.4) and gov.partial_every_s(0.5) == 0.5
    gov.observe_cpu(102.4, 1002.0)  # 80 %: partials come 1.6x further apart, no lag needed
    assert gov.cpu_use == pytest.approx(0.8) and gov.partial_every_s(0.5) == pytest.approx(0.8)
    assert gov.lag_s == 0.0 and gov.admits_new_leg()  # CPU use alone refuses no leg
    gov.observe_cpu(104.4, 1003.0)  # 100 %: 2x; the larger of the CPU and the lag stretch wins
    gov.observe(gov.config.thin_above_s + 0.9 * (gov.config.partials_off_above_s - gov.config.thin_above_s))
    assert gov.partial_every_s(0.5) == pytest.approx(0.5 * 3.7, rel=0.05)


def test_available_cpus_follow_a_container_cpu_limit(tmp_path: Path) -> None:
    node = float(len(os.sched_getaffinity(0)))
    limit = tmp_path / "cpu.max"
    limit.write_text("max 100000\n")
    assert available_cpus(limit) == node
    limit.write_text("50000 100000\n")  # limits.cpu: 500m
    assert available_cpus(limit) == 0.5
    assert available_cpus(tmp_path / "absent") == node


def test_the_smoothed_lag_follows_a_sustained_lag_not_one_late_step() -> None:
    gov = LoadGovernor(DegradationConfig(smoothing=0.2))
    gov.observe(3.0)  # one late step (a GC pause, a slow batch)
    assert gov.admits_new_leg()
    for _ in range(20):
        gov.observe(3.0)
    assert not gov.admits_new_leg() and gov.lag_s == pytest.approx(3.0, rel=0.05)


def test_the_degradation_order_is_checked() -> None:
    with pytest.raises(pydantic.ValidationError):
        DegradationConfig(thin_above_s=1.0, partials_off_above_s=0.5)
    with pytest.raises(pydantic.ValidationError):
        DegradationConfig(partials_off_above_s=2.0, refuse_legs_above_s=1.0)


@pytest.fixture(scope="module")
def asr(cache_dir: Path) -> Iterator[EdgeAsr]:
    edge = load_edge_asr(cache_dir, "whisper_tiny_en", "whisper_tiny_en", device="cpu")
    yield edge
    edge.close()


def _two_sentences() -> list[tuple[float, bytes]]:
    audio = telephone(np.concatenate([np.zeros(4000, np.float32), synthesize(SENTENCES[22], VOICES[1]),
                                      np.zeros(8000, np.float32), synthesize(SENTENCES[5], VOICES[1]),
                                      np.zeros(12000, np.float32)]))
    return packetize(to_8k_int16(audio), rng=random.Random(2), ntp_origin_s=1000.0)


def _decode(asr: EdgeAsr, vad: SileroVad, governor: LoadGovernor | None, waited_s: float = 0.0) -> StepOutput:
    """One leg through the per-leg pipeline the engine runs, packet by packet; each packet's step
    begins ``waited_s`` after it arrived."""
    tracker = ConversationTracker("busy-call", Diarizer(SpeakerEncoder("cpu")), PipelineConfig(), clock=lambda: 0.0)
    stream = LegStream("busy-call", "leg1", vad, asr, tracker, governor=governor)
    out = StepOutput()
    packets = _two_sentences()
    for t, data in packets:
        out.extend(stream.push([(data, 1000.0 + t)], 1000.0 + t + waited_s))
    end = 1000.0 + packets[-1][0] + 1.0
    out.extend(stream.close(end))
    out.segments += tracker.flush(end)
    return out


def _lagging(lag_s: float) -> LoadGovernor:
    gov = LoadGovernor(DegradationConfig(smoothing=1.0))
    gov.observe(lag_s)
    return gov


@needs_espeak
def test_under_load_partials_thin_out_and_every_final_still_comes(asr: EdgeAsr) -> None:
    vad = SileroVad()
    calm = _decode(asr, vad, None)
    c = DegradationConfig()
    thinning, off = _lagging((c.thin_above_s + c.partials_off_above_s) / 2), _lagging(2.5)
    thin = _decode(asr, vad, thinning)
    none = _decode(asr, vad, off)
    assert len(calm.partials) >= 4
    assert 0 < len(thin.partials) < len(calm.partials) and thinning.partials_thinned > 0
    assert len(none.partials) == 0 and off.partials_thinned >= len(calm.partials)
    # Finals are never given up: the same segments, word for word, at every load.
    assert len(calm.segments) == 2
    assert [s.text for s in none.segments] == [s.text for s in thin.segments] == [s.text for s in calm.segments]
    assert wer([SENTENCES[22] + " " + SENTENCES[5]], [" ".join(s.text for s in calm.segments)]) <= 0.35


async def test_a_lagging_engine_refuses_new_legs_with_a_reason_and_admits_them_again(asr: EdgeAsr) -> None:
    outputs: list[tuple[StepOutput, str]] = []
    clock = [2000.0]
    dead_lettered = asyncio.Event()

    async def sink(out: StepOutput, topic: str) -> None:
        outputs.append((out, topic))
        if out.rejected:
            dead_lettered.set()

    engine = SpeechEngine(vad=SileroVad(), encoder=SpeakerEncoder("cpu"), asr=asr, sink=sink,
                          clock=lambda: clock[0], config=SpeechServiceConfig(idle_close_s=5.0))
    packet = _two_sentences()[0][1]
    # The engine measures its lag itself: packets that arrived 3 s before a worker takes them.
    open_leg = names.audio("dev", "call-a", "leg1")
    for _ in range(30):
        assert engine.submit(open_leg, packet, clock[0] - 3.0)
    async with asyncio.timeout(30):
        while engine.counters.lag_s < 0.5:
            await asyncio.sleep(0.01)  # the leg's worker takes the packets (bounded by the timeout)
    for _ in range(30):  # a sustained lag
        engine.governor.observe(3.0)
    late_leg = names.audio("dev", "call-b", "leg1")
    assert not engine.submit(late_leg, packet, clock[0])
    assert engine.counters.legs_refused_overload == 1 and engine.counters.legs_refused == 0
    assert engine.submit(open_leg, packet, clock[0])  # legs already open carry on
    await asyncio.wait_for(dead_lettered.wait(), 10)  # the dead letter is published in the background
    (error, payload), = [r for o, _ in outputs for r in o.rejected]
    assert error.reason == "overloaded" and "lags" in str(error) and payload == packet
    assert [t for o, t in outputs if o.rejected] == [late_leg]
    for _ in range(30):  # caught up
        engine.governor.observe(0.0)
    assert engine.submit(late_leg, packet, clock[0] + engine.config.idle_close_s)
    clock[0] += 60.0
    await engine.close()


class _FinalsAlwaysBusy:
    """The real models, as seen while another leg's final is always queued or decoding."""

    def __init__(self, asr: EdgeAsr) -> None:
        self._asr = asr
        self.name, self.version = asr.name, asr.version
        self.decode_final, self.decode_partial = asr.decode_final, asr.decode_partial
        self.finals_pending = 1


@needs_espeak
def test_partials_wait_while_finals_are_pending_and_finals_are_never_skipped(asr: EdgeAsr) -> None:
    governor = _lagging(0.0)  # no lag at all: only the pending finals hold partials back
    out = _decode(_FinalsAlwaysBusy(asr), SileroVad(), governor)  # type: ignore[arg-type]
    assert out.partials == [] and governor.partials_thinned >= 4
    assert len(out.segments) == 2


@needs_espeak
def test_a_leg_behind_decodes_no_partial_of_old_audio_and_keeps_its_finals(asr: EdgeAsr) -> None:
    vad = SileroVad()
    calm_governor, behind_governor = _lagging(0.0), _lagging(0.0)  # no smoothed lag: only the step's own wait
    stale = DegradationConfig().stale_partial_s
    calm = _decode(asr, vad, calm_governor, waited_s=stale / 2)
    behind = _decode(asr, vad, behind_governor, waited_s=stale * 2)
    assert len(calm.partials) >= 4 and calm_governor.partials_thinned == 0
    assert behind.partials == [] and behind_governor.partials_thinned >= len(calm.partials)
    assert [s.text for s in behind.segments] == [s.text for s in calm.segments] and len(calm.segments) == 2
