"""Speech models on espeak-ng speech sent through G.711: VAD, streaming ASR, domain LM, OOV words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.scoring import wer
from bench.speech_corpus import SENTENCES, VOICES, build_conversation, espeak_available, synthesize, telephone
from models.asr import (
    AsrModel,
    AsrStream,
    DomainLm,
    build_domain_lm,
    ipa_to_cmu,
    letters_to_cmu,
    load_dictionary,
    median_f0,
    normalize_text,
)
from models.vad import SAMPLE_RATE, SileroVad, VadConfig

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")

# Measured here (first 8 sentences per voice, G.711 mu-law, domain LM): WER 0.045 (en-us),
# 0.164 (en-us+f3), 0.10 pooled; the generic LM on the same audio: > 1.0. Decoding is
# deterministic; the margins are for other espeak-ng / PocketSphinx builds.
VOICE_WER_BOUND = 0.25
POOLED_WER_BOUND = 0.15
GENERIC_WER_FLOOR = 0.50
N_TEST = 8

_PAD = np.zeros(SAMPLE_RATE // 4, dtype=np.float32)


def _acoustic_phones() -> set[str]:
    """The context-independent phones of the en-us acoustic model (its binary mdef names them)."""
    from pocketsphinx import get_model_path

    mdef = (Path(get_model_path()) / "en-us" / "en-us" / "mdef").read_bytes()
    names = mdef[mdef.index(b"+NSN+"):].split(b"\0")
    names = names[:names.index(b"")]  # the null-terminated list ends where the padding starts
    return {n.decode() for n in names if not n.startswith(b"+") and n != b"SIL"}


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> DomainLm:
    return build_domain_lm(SENTENCES, tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def clips() -> dict[str, list[np.ndarray]]:
    """The first sentences in each voice, as a G.711 call delivers them (16 kHz again)."""
    return {v: [telephone(np.concatenate([_PAD, synthesize(s, v), _PAD])) for s in SENTENCES[:N_TEST]]
            for v in VOICES}


def _decode(model: AsrModel, clips: list[np.ndarray], chunk: int = 320) -> list[str]:
    stream = model.new_stream()
    out = []
    for x in clips:
        stream.start()
        for i in range(0, len(x), chunk):
            stream.feed(x[i:i + chunk])
        out.append(stream.finish().text)
    return out


def test_domain_lm_brings_pronunciations_for_new_words(domain: DomainLm) -> None:
    assert set(domain.oov) == {"medevac", "sitrep", "waypoint", "exfil"}
    phones = _acoustic_phones()
    for word, (pron, source) in domain.oov.items():
        assert source == "espeak-ng"
        assert pron and set(pron.split()) <= phones, (word, pron)
    entries = dict(line.split(" ", 1) for line in domain.dict_path.read_text().splitlines())
    assert entries["waypoint"] == "W EY P OY N T"
    assert entries["convoy"] == "K AA N V OY"  # from CMUdict
    vocab = {w for s in SENTENCES for w in s.split()}
    assert set(domain.words) == vocab
    arpa = domain.lm_path.read_text()
    assert "\\data\\" in arpa and "<s>" in arpa and "</s>" in arpa and " medevac " in arpa


def test_pronunciation_fallbacks_give_acoustic_model_phones() -> None:
    phones = _acoustic_phones()
    assert ipa_to_cmu("t\u0283\u02c8\u025bkp\u0254\u200d\u026ant") == "CH EH K P OY N T"  # checkpoint
    for word in ("medevac", "thirty", "quickship", "xylophone"):
        got = letters_to_cmu(word).split()
        assert got and set(got) <= phones, (word, got)
    assert "convoy" in load_dictionary()
    assert normalize_text("Roger, Convoy-Bravo!") == "roger convoy bravo"


def test_domain_lm_transcribes_telephone_speech(domain: DomainLm, clips: dict[str, list[np.ndarray]]) -> None:
    refs = list(SENTENCES[:N_TEST])
    all_refs, all_hyps = [], []
    for voice in VOICES:
        hyps = _decode(domain.model(), clips[voice])
        assert wer(refs, hyps) <= VOICE_WER_BOUND, (voice, list(zip(refs, hyps)))
        all_refs += refs
        all_hyps += hyps
    assert wer(all_refs, all_hyps) <= POOLED_WER_BOUND


def test_generic_lm_garbles_the_same_speech(clips: dict[str, list[np.ndarray]]) -> None:
    hyps = _decode(AsrModel(), clips[VOICES[0]][:3])
    assert wer(SENTENCES[:3], hyps) >= GENERIC_WER_FLOOR


def test_final_result_has_word_timings_and_confidences(domain: DomainLm,
                                                       clips: dict[str, list[np.ndarray]]) -> None:
    stream = domain.model().new_stream()
    x = clips[VOICES[0]][2]  # "checkpoint alpha reached all vehicles accounted for"
    stream.start()
    half = len(x) // 2
    stream.feed(x[:half])
    partial = stream.partial()
    stream.feed(x[half:])
    result = stream.finish()
    assert partial and partial.split()[0] == "checkpoint"
    assert result.text.startswith(partial.split()[0])
    duration = len(x) / SAMPLE_RATE
    starts = [w.start_s for w in result.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start_s < w.end_s <= duration + 0.01 for w in result.words)
    assert all(0.0 <= w.confidence <= 1.0 for w in result.words)
    assert any(w.confidence < 1.0 for w in result.words) or result.confidence > 0.5
    assert result.words[0].start_s >= _PAD.size / SAMPLE_RATE - 0.1  # the padding is not a word


def test_pitch_picks_the_warp_per_stream(domain: DomainLm, clips: dict[str, list[np.ndarray]]) -> None:
    f0 = {v: median_f0(clips[v][0])[0] for v in VOICES}
    assert 80 < f0["en-us"] < 140 and 170 < f0["en-us+f3"] < 280, f0
    for voice, warp in (("en-us", 1.0), ("en-us+f3", 1.3)):
        stream: AsrStream = domain.model().new_stream()
        stream.start()
        stream.feed(clips[voice][1])
        stream.finish()
        assert stream.warp == warp


def test_vad_finds_each_turn_of_a_leg() -> None:
    conv = build_conversation(SENTENCES[:6])
    vad = SileroVad()
    cfg = VadConfig()
    for leg, audio in conv.legs.items():
        stream = vad.new_stream(cfg)
        events = []
        x = telephone(audio)
        for i in range(0, len(x), 320):
            events += stream.push(x[i:i + 320])
        events += stream.end()
        kinds = [e.kind for e in events]
        assert kinds == ["start", "end"] * (len(kinds) // 2) and kinds
        spans = [(events[i].seconds, events[i + 1].seconds) for i in range(0, len(events), 2)]
        turns = [(t.start_s, t.end_s) for t in conv.turns if t.leg == leg]
        assert len(spans) == len(turns), (spans, turns)
        for (a, b), (ra, rb) in zip(spans, turns):
            assert abs(a - ra) < 0.3 and abs(b - rb) < 0.5, ((a, b), (ra, rb))
