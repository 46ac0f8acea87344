"""Speech models on real speech: the pinned Whisper artifacts, batched decoding with word times,
probabilities and confidence, vocabulary prompts, the one WER, and the VAD."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from bench.domain_speech import domain_sentences, speak
from cloud_trainer.asr_adapt import build_candidate_vocabulary, transcribe
from models.artifacts import ARTIFACTS, JOINED, _sha256
from models.edge_asr import load_whisper
from models.text import normalize, wer
from models.vad import SAMPLE_RATE, SileroVad, VadConfig
from models.whisper_asr import DecodeOptions, LogMel, WhisperAsr, Word, collapse_repeats, segment_confidence
from sim.speech_corpus import SENTENCES, VOICES, build_conversation, espeak_available, synthesize, telephone

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def tiny(cache_dir: Path) -> Iterator[WhisperAsr]:
    yield load_whisper(cache_dir, "whisper_tiny_en", device="cpu", cpu_threads=2)


def test_whisper_artifacts_match_their_pins(cache_dir: Path) -> None:
    for name in ("whisper_tiny_en", "whisper_base_part1", "whisper_base_part2"):
        a = ARTIFACTS[name]
        for member, pin in zip(a.members, a.member_sha256, strict=True):
            assert _sha256(cache_dir / name / Path(member).name) == pin
    joined = JOINED["whisper_base"]
    assert _sha256(cache_dir / "whisper_base" / "model.bin") == joined.sha256
    assert {p.name for p in (cache_dir / "whisper_base").iterdir()} >= {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}


def test_heldout_sentences_are_in_nothing_a_vocabulary_is_built_from() -> None:
    from bench.domain_speech import BASE_SENTENCES
    from bench.heldout_speech import HELDOUT, check_heldout

    check_heldout([*SENTENCES, *BASE_SENTENCES, *domain_sentences()])  # raises on a leak
    with pytest.raises(ValueError):
        check_heldout([HELDOUT[3].upper() + "."])  # the same sentence, normalised, is caught


def test_text_normalisation_is_one_form_for_both_sides() -> None:
    assert normalize("The Harbour closes at 14:30, don't be late!") == \
        "the harbor closes at fourteen thirty do not be late"
    assert normalize("40% of 1,200 trucks") == "forty percent of one thousand two hundred trucks"
    assert wer(["the harbour is closed"], ["The harbor is closed."]) == 0.0
    assert wer(["a b c d"], ["a x c"]) == pytest.approx(0.5)


@needs_espeak
def test_batched_decode_gives_words_times_probabilities_and_confidence(tiny: WhisperAsr) -> None:
    texts = ["the courier will cross the border at dawn", "please leave the keys under the kitchen window"]
    clips = [telephone(synthesize(t, v)) for t, v in zip(texts, VOICES, strict=True)]
    batch = tiny.transcribe(clips)
    alone = [tiny.transcribe([c])[0] for c in clips]
    assert [r.text for r in batch] == [r.text for r in alone]  # batching changes nothing
    assert wer(texts, [r.text for r in batch]) <= 0.35  # espeak-ng through G.711 (measured 0.12)
    for clip, r in zip(clips, batch, strict=True):
        dur = len(clip) / SAMPLE_RATE
        assert len(r.words) >= 5
        starts = [w.start_s for w in r.words]
        assert starts == sorted(starts) and all(0 <= w.start_s <= w.end_s <= dur for w in r.words)
        assert all(0.0 <= w.confidence <= 1.0 for w in r.words)
        assert 0.0 < r.confidence <= 1.0 and r.avg_logprob < 0 and 0 <= r.no_speech_prob <= 1
    silence = tiny.transcribe([np.zeros(SAMPLE_RATE, np.float32)], DecodeOptions(words=True))[0]
    assert silence.confidence < 0.5  # nothing said: no confident words
    # Beam search and temperature fallback over a batch in which some items need a retry.
    dc = tiny.transcribe([clips[0], np.zeros(2 * SAMPLE_RATE, np.float32), clips[1]],
                         DecodeOptions(beam_size=3, temperatures=(0.0, 0.4), logprob_threshold=-0.3))
    assert wer(texts, [dc[0].text, dc[2].text]) <= 0.35 and dc[1].confidence < 0.5


def test_confidence_falls_with_word_probabilities_and_no_speech() -> None:
    assert segment_confidence([], -0.1, 0.0) == 0.0
    high = segment_confidence([0.95, 0.9, 0.97], -0.1, 0.01)
    assert high > segment_confidence([0.95, 0.05, 0.97], -0.1, 0.01)
    assert high > segment_confidence([0.95, 0.9, 0.97], -0.1, 0.8)
    assert 0.0 <= high <= 1.0


@needs_espeak
def test_a_vocabulary_prompt_teaches_domain_words(tiny: WhisperAsr) -> None:
    sentences = domain_sentences()
    train, held = sentences[:18], sentences[18:22]
    clips = [speak(s, i) for i, s in enumerate(held)]
    vocab = build_candidate_vocabulary([], train)
    assert not set(map(normalize, held)) & set(map(normalize, train))
    before = wer(held, transcribe(tiny, clips))
    after = wer(held, transcribe(tiny, clips, vocab.prompt))
    assert after <= before - 0.3, (before, after)  # measured 0.9 -> 0.15 on six sentences


@needs_espeak
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


@needs_espeak
def test_legs_share_one_vad_network_and_keep_their_own_state() -> None:
    vad = SileroVad()
    x = np.concatenate([np.zeros(8000, np.float32), telephone(synthesize(SENTENCES[0], VOICES[0])),
                        np.zeros(16000, np.float32)])
    y = telephone(synthesize(SENTENCES[1], VOICES[1]))[::-1].copy()  # other audio, fed in between
    alone = vad.new_stream()
    expected = [e for i in range(0, len(x), 320) for e in alone.push(x[i:i + 320])]
    a, b = vad.new_stream(), vad.new_stream()
    assert a.network is b.network is vad
    events = []
    for i in range(0, len(x), 320):  # interleaved: b's audio must not leak into a's state
        b.push(y[i % len(y):i % len(y) + 320])
        events += a.push(x[i:i + 320])
    assert events == expected and expected


@needs_espeak
def test_the_batcher_decodes_waiting_legs_in_one_call_and_keeps_prompts_apart(tiny: WhisperAsr) -> None:
    from models.whisper_batch import WhisperBatcher

    texts = ["the courier will cross the border at dawn", "please leave the keys under the kitchen window"]
    clips = [telephone(synthesize(t, v)) for t, v in zip(texts, VOICES, strict=True)]
    alone = [r.text for r in tiny.transcribe(clips)]
    batcher = WhisperBatcher(tiny, max_batch=8)
    opts = DecodeOptions()
    try:
        with batcher._cv:
            futures = [batcher.submit(clips[i % 2], opts) for i in range(4)]
            other = batcher.submit(clips[0], opts, prompt="Courier, border, dawn.")  # another prompt
        results = [f.result(timeout=60) for f in futures]
        assert other.result(timeout=60).text
    finally:
        batcher.close()
    assert [r.text for r in results] == [alone[i % 2] for i in range(4)]
    assert list(batcher.stats.sizes) == [4, 1] and batcher.stats.batches == 2
    # Mixed prompts in one direct call are split into one model call per prompt.
    mixed = tiny.transcribe(clips, prompts=[None, "Kitchen, window, keys."])
    assert mixed[0].text == alone[0] and wer([texts[1]], [mixed[1].text]) <= 0.35


@needs_espeak
def test_the_batcher_takes_finals_before_partials_queued_earlier(tiny: WhisperAsr) -> None:
    from models.whisper_batch import WhisperBatcher

    clip = telephone(synthesize("the courier will cross the border at dawn", VOICES[0]))
    batcher = WhisperBatcher(tiny, max_batch=8)
    done: list[str] = []
    try:
        with batcher._cv:  # queue everything before the inference thread looks
            partials = [batcher.submit(clip, DecodeOptions(words=False)) for _ in range(2)]
            final = batcher.submit(clip, DecodeOptions(words=True), urgent=True)
            assert batcher.urgent_pending == 1 and batcher.pending == 3
            for name, fut in [("partial", partials[0]), ("partial", partials[1]), ("final", final)]:
                fut.add_done_callback(lambda _, name=name: done.append(name))
        assert final.result(timeout=60).words
        for p in partials:
            assert p.result(timeout=60).text
    finally:
        batcher.close()
    assert done == ["final", "partial", "partial"]
    assert list(batcher.stats.sizes) == [1, 2] and batcher.urgent_pending == 0 and batcher.pending == 0


@needs_espeak
def test_a_model_that_runs_two_calls_at_once_answers_each_request_as_one_call_would(cache_dir: Path,
                                                                                       tiny: WhisperAsr) -> None:
    from models.whisper_batch import WhisperBatcher

    texts = ["the courier will cross the border at dawn", "please leave the keys under the kitchen window"]
    clips = [telephone(synthesize(t, v)) for t, v in zip(texts, VOICES, strict=True)]
    alone = [r.text for r in tiny.transcribe(clips)]
    twice = load_whisper(cache_dir, "whisper_tiny_en", device="cpu", cpu_threads=1, parallel=2)
    batcher = WhisperBatcher(twice, max_batch=1)  # one request a call: the two threads take one each
    try:
        futures = [batcher.submit(clips[i % 2], DecodeOptions()) for i in range(6)]
        results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert [r.text for r in results] == [alone[i % 2] for i in range(6)]
    assert batcher.stats.batches == 6 and batcher.pending == 0 and twice.parallel == 2


def _words(text: str) -> tuple[Word, ...]:
    return tuple(Word(w, i * 0.3, i * 0.3 + 0.25, 0.9) for i, w in enumerate(text.split()))


def test_a_decoding_loop_is_kept_once_and_short_repeats_stay() -> None:
    # What tiny.en gave on a lossy leg in CI: one sentence three times in one utterance.
    looped = _words("We found an old map inside the library book. We found an old map inside the library book."
                    " we found an old map inside the library book")
    kept = collapse_repeats(looped)
    assert " ".join(w.word for w in kept) == "We found an old map inside the library book."
    assert kept[-1].end_s == looped[8].end_s  # the first copy keeps its timings
    # A loop at the end of otherwise good words, and a repeat of two words that people do say.
    assert [w.word for w in collapse_repeats(_words("go to the gate to the gate to the gate now"))] == \
        ["go", "to", "the", "gate", "now"]
    assert [w.word for w in collapse_repeats(_words("no, no, I said thank you thank you"))] == \
        ["no,", "no,", "I", "said", "thank", "you", "thank", "you"]
    assert collapse_repeats(()) == ()


def test_log_mel_features_are_faster_whispers_numbers() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 5 * SAMPLE_RATE)) * 0.1).astype(np.float32)
    x[1, 2 * SAMPLE_RATE:] = 0.0  # padded with silence, as a short clip in a batch is
    reference = np.stack([FeatureExtractor(feature_size=80)(row, padding=0)[:, :500] for row in x])
    ours = LogMel(80)(x)[:, :, :500]
    assert ours.shape == reference.shape == (2, 80, 500)
    assert np.abs(ours - reference).max() < 1e-4
