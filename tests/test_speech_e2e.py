"""Speech pipeline: leg recognizer, conversation ordering, idle close, and the service end to end
through a real Mosquitto with RTP loss and reordering."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from bench.heldout_speech import HELDOUT, build_heldout_call, piper_available
from cli.brokers import MosquittoBroker
from common.settings import Settings
from devices.audio import Impairments, LegSource, packetize, stream_audio
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.pipeline import (
    ConversationTracker,
    LegRecognizer,
    Partial,
    PipelineConfig,
    StepOutput,
    Utterance,
)
from edge_agent.speech.service import SpeechEngine, SpeechService, SpeechServiceConfig, register_metrics
from edge_agent.speech.stream import PcmChunk
from models.edge_asr import AsrVocabulary, EdgeAsr, load_edge_asr, prompt_from_sentences
from models.speaker import SpeakerEncoder
from models.vad import SAMPLE_RATE, SileroVad
from models.whisper_asr import AsrResult, Word
from sim.scoring import der, wer
from sim.speech_corpus import SENTENCES, VOICES, espeak_available, synthesize, telephone, to_8k_int16
from topics import names
from topics.clip import AudioClip, decode_clip
from topics.deadletter import decode_dead_letter
from topics.transcript import ModelRef, PartialTranscript, TranscriptSegment, decode_partial, decode_segment

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")

needs_piper = pytest.mark.skipif(not piper_available(), reason="piper-tts (the bench extra) or its voice missing")

# An unseen call (held-out sentences, Piper voice and a pitched copy of it) through Mosquitto
# with 5 % loss and 5 % reordering, Whisper tiny.en. bench.speech measures the longer noisy
# version of this call at WER 0.09, DER 0.01; bounds leave margin for loss patterns.
E2E_WER_BOUND = 0.15
E2E_DER_BOUND = 0.15


@pytest.fixture(scope="module")
def asr(cache_dir: Path) -> Iterator[EdgeAsr]:
    """Whisper tiny.en for partials and finals, the radio net's sentences as its vocabulary prompt."""
    edge = load_edge_asr(cache_dir, "whisper_tiny_en", "whisper_tiny_en", device="cpu",
                         vocabulary=AsrVocabulary(version="test-domain",
                                                  prompt=prompt_from_sentences(SENTENCES, keep="first")))
    yield edge
    edge.close()


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder("cpu")


# ------------------------------------------------------------------ ordering, no models

class _OneHotEncoder:
    """Stands in for the speaker encoder: the first sample says who speaks."""

    def embed(self, samples: np.ndarray) -> np.ndarray:
        e = np.zeros(8, dtype=np.float32)
        e[int(round(float(samples[0])))] = 1.0
        return e


def _utt(leg: str, who: int, start_s: float, words: list[tuple[str, float, float]], n: int = 1) -> Utterance:
    dur = max(w[2] for w in words) + 0.2
    return Utterance(leg=leg, utterance=n, start_s=start_s, end_s=start_s + dur,
                     result=AsrResult(" ".join(w[0] for w in words),
                                      tuple(Word(w, a, b, 0.9) for w, a, b in words), 0.9),
                     samples=np.full(int(dur * SAMPLE_RATE), float(who), dtype=np.float32),
                     end_arrival_s=0.0, model=ModelRef("asr", "t"))


def _tracker(hold_max_s: float = 2.0) -> ConversationTracker:
    diarizer = Diarizer(_OneHotEncoder())  # type: ignore[arg-type]
    return ConversationTracker("c", diarizer, PipelineConfig(hold_max_s=hold_max_s), clock=lambda: 0.0)


def test_segments_are_released_in_conversation_time_order() -> None:
    tr = _tracker()
    tr.open_leg("a", origin_s=100.0)
    tr.open_leg("b", origin_s=100.5)  # leg b's clock starts half a second later
    assert tr.progress("a", 0.0, now_s=1.0) == []
    # b finishes an utterance first; it starts at 1.5 s on the conversation clock.
    held = tr.add_utterance(_utt("b", 2, 1.0, [("copy", 0.1, 0.4), ("that", 0.4, 0.7)]), now_s=1.1)
    assert held == []  # leg a has not decoded past 1.5 s yet: it may still produce an earlier one
    out = tr.add_utterance(_utt("a", 1, 0.8, [("roger", 0.0, 0.5)]), now_s=1.2)
    # a's own segment needs only b to be past 0.8 s (b's finished utterance put it at 2.1 s);
    # labels follow the order the diarizer met the voices: b first.
    assert [(s.seq, s.speaker, s.text) for s in out] == [(0, "S2", "roger")]
    out = tr.progress("a", 2.5, now_s=1.3)
    assert [(s.seq, s.leg, s.speaker, s.text) for s in out] == [(1, "b", "S1", "copy that")]
    assert out[0].start_s == pytest.approx(1.6)  # 0.5 offset + 1.0 leg time + 0.1 word start
    assert [s.seq for s in tr.transcript] == [0, 1]
    assert [s.start_s for s in tr.transcript] == sorted(s.start_s for s in tr.transcript)


def test_a_silent_leg_holds_others_back_at_most_hold_max() -> None:
    tr = _tracker(hold_max_s=2.0)
    tr.open_leg("a", 0.0)
    tr.open_leg("b", 0.0)
    assert tr.add_utterance(_utt("a", 1, 5.0, [("over", 0.0, 0.3)]), now_s=10.0) == []
    assert tr.progress("a", 6.0, now_s=11.9) == []
    out = tr.progress("a", 6.5, now_s=12.0)
    assert [s.text for s in out] == ["over"] and tr.released_late == 1


def test_closing_a_leg_releases_what_it_held_back() -> None:
    tr = _tracker()
    tr.open_leg("a", 0.0)
    tr.open_leg("b", 0.0)
    assert tr.add_utterance(_utt("a", 1, 3.0, [("out", 0.0, 0.3)]), now_s=1.0) == []
    assert [s.text for s in tr.close_leg("b", now_s=1.1)] == ["out"]
    assert tr.open_legs == ["a"]


# ------------------------------------------------------------------ one leg, real models

def _chunks(x: np.ndarray, step: int = 320, start_s: float = 0.0) -> list[PcmChunk]:
    return [PcmChunk("c", "a", x[i:i + step], start_s + i / SAMPLE_RATE, 1) for i in range(0, len(x), step)]


@needs_espeak
def test_leg_recognizer_partials_and_final(vad: SileroVad, asr: EdgeAsr) -> None:
    speech = telephone(synthesize(SENTENCES[7], VOICES[0]))  # ~3 s
    x = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    rec = LegRecognizer("a", vad, asr)
    events: list[Partial | Utterance] = []
    for k, chunk in enumerate(_chunks(x)):
        events += rec.push(chunk, arrival_s=k * 0.02)
    partials = [e for e in events if isinstance(e, Partial)]
    finals = [e for e in events if isinstance(e, Utterance)]
    # espeak-ng through G.711 is hard for Whisper tiny.en: measured 0.3 ("park lift" for "forklift")
    assert len(finals) == 1 and wer([SENTENCES[7]], [finals[0].result.text]) <= 0.35
    speech_s = len(speech) / SAMPLE_RATE
    assert len(partials) >= int(speech_s / 0.5) - 1
    marks = [0.0] + [p.speech_s for p in partials]
    assert max(np.diff(marks)) <= 0.5 + 0.05  # a partial for every half second of speech
    assert finals[0].start_s == pytest.approx(0.5, abs=0.25)
    assert not rec.in_speech and rec.safe_until_s > finals[0].end_s - 0.1


@needs_espeak
def test_a_final_carries_the_legs_audio_around_it_for_its_hard_example(vad: SileroVad, asr: EdgeAsr) -> None:
    speech = telephone(synthesize(SENTENCES[7], VOICES[0]))
    hiss = (np.random.default_rng(3).standard_normal(3 * SAMPLE_RATE) * 1e-3).astype(np.float32)
    x = np.concatenate([hiss[:2 * SAMPLE_RATE], speech, hiss[2 * SAMPLE_RATE:]])  # 2 s before, 1 s after
    for context_s in (1.0, 0.0):
        rec = LegRecognizer("a", vad, asr, PipelineConfig(example_context_s=context_s))
        finals = [e for k, c in enumerate(_chunks(x)) for e in rec.push(c, k * 0.02) if isinstance(e, Utterance)]
        assert len(finals) == 1
        u = finals[0]
        start, end = round(u.start_s * SAMPLE_RATE), round(u.end_s * SAMPLE_RATE)
        assert len(u.lead) == int(context_s * SAMPLE_RATE)  # the whole second, though keep_s alone is shorter
        assert np.array_equal(u.lead, x[start - len(u.lead):start])
        assert np.array_equal(u.tail, x[end:end + len(u.tail)])
        # after it: only what had arrived when the VAD closed the utterance (the final is not delayed)
        assert (0 < len(u.tail) < 0.6 * SAMPLE_RATE) if context_s else len(u.tail) == 0


@needs_espeak
def test_leg_recognizer_bridges_small_gaps_and_cuts_at_big_ones(vad: SileroVad, asr: EdgeAsr) -> None:
    speech = telephone(synthesize(SENTENCES[21], VOICES[0]))  # "radio check how do you read me"
    chunks = _chunks(np.concatenate([np.zeros(4000, np.float32), speech]))
    rec = LegRecognizer("a", vad, asr)
    events = []
    for k, c in enumerate(chunks):
        if k == 40:  # 20 ms lost with no concealment: filled with silence
            continue
        events += rec.push(c, k * 0.02)
    # A jump of 30 s (a stream reset): the utterance in progress ends, time moves on.
    events += rec.push(PcmChunk("c", "a", np.zeros(320, np.float32), 30.0 + len(chunks) * 0.02, 1), 40.0)
    finals = [e for e in events if isinstance(e, Utterance)]
    assert rec.gaps_filled == 1 and rec.discontinuities == 1
    assert len(finals) == 1 and wer([SENTENCES[21]], [finals[0].result.text]) <= 0.35
    assert rec.received == int(round((30.0 + len(chunks) * 0.02) * SAMPLE_RATE)) + 320


# ------------------------------------------------------------------ engine: idle close on a given clock

@needs_espeak
async def test_idle_legs_close_and_flush_their_speech(vad: SileroVad, encoder: SpeakerEncoder,
                                                     asr: EdgeAsr) -> None:
    now = [1000.0]
    outputs: list[StepOutput] = []

    async def sink(out: StepOutput, topic: str) -> None:
        outputs.append(out)

    engine = SpeechEngine(vad=vad, encoder=encoder, asr=asr, sink=sink, clock=lambda: now[0],
                          config=SpeechServiceConfig(idle_close_s=5.0, tick_s=0.02, publish_clips=True))
    # Speech that stops without trailing silence: only closing the leg can finish it.
    audio = telephone(np.concatenate([np.zeros(4000, np.float32), synthesize(SENTENCES[22], VOICES[1])]))
    topic = names.audio("dev", "idle-call", "leg1")
    for t, data in packetize(to_8k_int16(audio), rng=random.Random(2), ntp_origin_s=now[0]):
        assert engine.submit(topic, data, now[0] + t, case_id="case-7")
    now[0] += 3.0  # not idle yet
    closed = asyncio.ensure_future(engine.conversation_closed())
    done, _ = await asyncio.wait({closed}, timeout=0.5)
    assert not done and engine.open_legs == 1
    now[0] += 10.0  # idle now: the next tick closes the leg
    conversation, n_segments = await asyncio.wait_for(closed, 30)
    assert conversation == "idle-call" and n_segments == 1 and engine.open_legs == 0
    segments = [s for o in outputs for s in o.segments]
    assert len(segments) == 1 and wer([SENTENCES[22]], [segments[0].text]) <= 0.35
    # speech.publish_clips: the utterance's audio, keyed and placed like its segment, with its case
    clips = [c for o in outputs for c in o.clips]
    assert [(c.conversation, c.leg, c.utterance, c.case_id, c.device) for c in clips] == [
        ("idle-call", "leg1", segments[0].utterance, "case-7", "dev")]
    assert abs(clips[0].start_s - segments[0].start_s) < 0.5 and abs(clips[0].end_s - segments[0].end_s) < 0.5
    assert np.abs(np.frombuffer(clips[0].pcm, "<i2")).max() > 1000  # speech, not silence
    assert engine.counters.legs_closed == 1 and engine.counters.conversations_closed == 1
    registry = CollectorRegistry()
    register_metrics(engine.counters, registry)
    assert registry.get_sample_value("edge_speech_segments_published_total") == 0  # no publisher here
    assert registry.get_sample_value("edge_speech_legs_closed_total") == 1
    assert registry.get_sample_value("edge_speech_final_latency_seconds_count") > 0
    assert registry.get_sample_value("edge_speech_final_latency_seconds_sum") > 0
    await engine.close()


# ------------------------------------------------------------------ the service through Mosquitto

@needs_espeak
@needs_piper
@pytest.mark.integration
async def test_service_transcribes_an_unseen_call_through_mosquitto(mosquitto: MosquittoBroker, settings: Settings,
                                                              vad: SileroVad, encoder: SpeakerEncoder,
                                                              asr: EdgeAsr) -> None:
    conversation, device = "e2e-call-1", "tap-7"
    conv = build_heldout_call(HELDOUT[:8], snr_db=None)  # sentences nothing was adapted on
    cfg = settings.model_copy(deep=True)
    cfg.mqtt.port = mosquitto.port
    cfg.mqtt.client_id = "speech-e2e"
    service = SpeechService(cfg, config=SpeechServiceConfig(idle_close_s=1.5, publish_clips=True), asr=asr, vad=vad,
                            encoder=encoder)
    await asyncio.wait_for(service.load(), 120)  # model warm-up: CPU work, bounded apart from the connection
    stop_service = asyncio.Event()
    running = asyncio.create_task(service.run(stop_service))
    await asyncio.wait_for(service.connected.wait(), 20)
    assert service.engine is not None

    segments: list[TranscriptSegment] = []
    partials: list[PartialTranscript] = []
    clips: list[AudioClip] = []
    dead = asyncio.get_running_loop().create_future()
    arrived = asyncio.Condition()

    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="speech-e2e-sub",
                              protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe(names.transcript(conversation), qos=1)
        await sub.subscribe(names.partial_transcript(conversation), qos=0)
        await sub.subscribe(names.dead_letter("audio"), qos=1)
        await sub.subscribe(names.audio_clip(conversation), qos=1)

        async def collect() -> None:
            async for m in sub.messages:
                assert isinstance(m.payload, bytes)
                if m.topic.matches(names.transcript(conversation)):
                    segments.append(decode_segment(m.payload))
                elif m.topic.matches(names.partial_transcript(conversation)):
                    partials.append(decode_partial(m.payload))
                elif m.topic.matches(names.audio_clip(conversation)):
                    clips.append(decode_clip(m.payload))
                elif not dead.done():
                    dead.set_result(decode_dead_letter(m.payload))
                async with arrived:
                    arrived.notify_all()

        collector = asyncio.create_task(collect())
        closed = asyncio.ensure_future(service.engine.conversation_closed())
        # A packet that is not RTP on a leg's topic: dead-lettered, the leg carries on.
        await sub.publish(names.audio(device, conversation, "leg1"), b"\x00\x01junk", qos=1)
        legs = [LegSource(name=leg, samples=to_8k_int16(audio)) for leg, audio in conv.legs.items()]
        report = await asyncio.to_thread(
            stream_audio, "127.0.0.1", mosquitto.port, device=device, conversation=conversation, legs=legs,
            speed=4.0, impairments=Impairments(loss=0.05, reorder=0.05, reorder_max=3), seed=7,
            client_id="speech-e2e-sender")
        assert sum(lr.dropped for lr in report.legs.values()) > 0
        assert sum(lr.reordered for lr in report.legs.values()) > 0
        name, n_segments = await asyncio.wait_for(closed, 60)
        assert name == conversation
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: len(segments) >= n_segments and len(clips) >= n_segments),
                                   10)
        dl = await asyncio.wait_for(dead, 10)
        collector.cancel()
    stop_service.set()
    await running

    assert dl.stage == "audio" and dl.topic == names.audio(device, conversation, "leg1")
    assert dl.payload == b"\x00\x01junk" and dl.reason
    # Final segments: in conversation order, one per turn, the script's words, the right speakers.
    assert [s.seq for s in segments] == list(range(len(segments)))
    assert [s.start_s for s in segments] == sorted(s.start_s for s in segments)
    assert len(segments) == len(conv.turns)
    hyp = " ".join(s.text for s in segments)
    assert wer([" ".join(t.text for t in conv.turns)], [hyp]) <= E2E_WER_BOUND, hyp
    ref_turns = [(t.speaker, t.start_s, t.end_s) for t in conv.turns]
    assert der(ref_turns, [(s.speaker, s.start_s, s.end_s) for s in segments]) <= E2E_DER_BOUND
    # Speaker turns: one speaker label per leg, different labels (which is "S1" depends on
    # which leg's first utterance the diarizer met first).
    by_leg = {leg: {s.speaker for s in segments if s.leg == leg} for leg in ("leg1", "leg2")}
    assert all(len(v) == 1 for v in by_leg.values()) and by_leg["leg1"] != by_leg["leg2"], by_leg
    assert [s.leg for s in segments] == [t.leg for t in conv.turns]  # the turns alternate as spoken
    assert all(s.model.version.endswith("+vocab.test-domain") and 0 < s.confidence <= 1 and s.words
               for s in segments)
    assert all(0 < s.latency_ms < 30_000 for s in segments)
    # speech.publish_clips: one clip per segment, same key, from the device that sent the audio
    assert sorted((c.leg, c.utterance) for c in clips) == sorted((s.leg, s.utterance) for s in segments)
    assert all(c.device == device and c.duration_s > 0.3 for c in clips)
    assert service.counters.clips_published == len(clips)
    # Partials: ordered per leg; each one due was published or counted as thinned (finals first:
    # on a loaded machine a partial waits while a final decodes, tests/test_speech_degradation.py).
    assert partials and len(partials) + service.counters.partials_thinned >= len(conv.turns)
    for leg in ("leg1", "leg2"):
        seqs = [p.seq for p in partials if p.leg == leg]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert all(p.provisional for p in partials)
    assert {p.speaker for p in partials} <= {s.speaker for s in segments} | {"?"}
    counters = service.counters
    assert counters.segments_published == len(segments) and counters.dead_letters_published >= 1
    assert counters.packets_overload == 0 and counters.worker_errors == 0
    assert counters.legs_closed == counters.legs_opened == 2


@needs_espeak
@pytest.mark.parametrize(("merge_below_s", "pause_s"), [(0.0, 0.5), (1.2, 0.5), (None, 0.8)])
def test_a_very_short_utterance_joins_the_next_one_when_asked(vad: SileroVad, asr: EdgeAsr,
                                                               merge_below_s: float | None, pause_s: float) -> None:
    short = telephone(synthesize("yes", VOICES[0]))  # well under a second
    longer = telephone(synthesize(SENTENCES[21], VOICES[0]))
    gap = np.zeros(int(pause_s * SAMPLE_RATE), np.float32)  # longer than the VAD's 0.4 s of silence
    x = np.concatenate([np.zeros(8000, np.float32), short, gap, longer, np.zeros(16000, np.float32)])
    # None: the defaults, which join across a 0.8 s pause (a lone "and" before a pause, dev calls)
    config = PipelineConfig() if merge_below_s is None else PipelineConfig(merge_below_s=merge_below_s,
                                                                          merge_gap_s=0.8)
    rec = LegRecognizer("a", vad, asr, config)
    events: list[Partial | Utterance] = []
    for k, chunk in enumerate(_chunks(x)):
        events += rec.push(chunk, arrival_s=k * 0.02)
    events += rec.close()
    finals = [e for e in events if isinstance(e, Utterance)]
    if merge_below_s == 0:
        assert len(finals) == 2 and finals[0].end_s < finals[1].start_s
    else:  # one utterance from the short one's start, holding both
        assert len(finals) == 1 and finals[0].start_s == pytest.approx(0.5, abs=0.25)
        assert finals[0].end_s >= (len(x) - 16000) / SAMPLE_RATE - 0.3
    assert not rec.in_speech
