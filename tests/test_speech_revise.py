"""DC revisions never make a transcript worse: word combination, hallucination rejection, the
never-worse rule, on real recordings (sim.real_speech) decoded by a real Whisper model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.speech_revise import ReviseRule, SpeechReviser, combine, hallucination
from models.edge_asr import load_whisper
from models.whisper_asr import AsrResult, WhisperAsr, Word
from sim.real_speech import Clip, load_clips
from sim.scoring import wer
from sim.speech_corpus import telephone


def _words(text: str, conf: float | list[float]) -> tuple[Word, ...]:
    ws = text.split()
    confs = conf if isinstance(conf, list) else [conf] * len(ws)
    return tuple(Word(w, 0.3 * i, 0.3 * i + 0.25, c) for i, (w, c) in enumerate(zip(ws, confs, strict=True)))


def test_combination_keeps_the_more_confident_word_and_never_drops_the_edges() -> None:
    edge = _words("neither did i", [0.9, 0.8, 0.9])
    dc = _words("neither desire", [0.95, 0.3])
    out = " ".join(w.word for w in combine(edge, dc))
    assert out == "neither did i"  # the DC's unsure "desire" loses; the edge's words all stay
    better = _words("neither did eye", [0.9, 0.9, 0.2])
    assert " ".join(w.word for w in combine(_words("neither dead i", [0.9, 0.3, 0.9]), better)) == "neither did i"


def test_hallucination_patterns_are_recognised() -> None:
    rule = ReviseRule()
    loop = AsrResult("I'm not going to speak. I'm not going to", _words("i'm not going to speak i'm not going to", 0.6),
                     0.6)
    assert hallucination(loop, 1.0, "neither did i", rule) in ("repetition", "too_many_words")
    assert hallucination(loop, 6.0, "neither did i", rule) == "repetition"
    many = AsrResult("a b c d e f g h i j", _words("a b c d e f g h i j", 0.9), 0.9)
    assert hallucination(many, 1.0, "", rule) == "too_many_words"
    quiet = AsrResult("thank you", _words("thank you", 0.9), 0.5, no_speech_prob=0.8)
    assert hallucination(quiet, 2.0, "", rule) == "no_speech"
    fine = AsrResult("neither did i", _words("neither did i", 0.9), 0.9, no_speech_prob=0.05)
    assert hallucination(fine, 1.0, "", rule) == ""


@pytest.fixture(scope="module")
def dc_model(cache_dir: Path) -> Iterator[WhisperAsr]:
    yield load_whisper(cache_dir, "whisper_tiny_en", device="cpu", cpu_threads=1)


@pytest.fixture(scope="module")
def clips(cache_dir: Path) -> dict[str, Clip]:
    return load_clips(cache_dir)


def test_a_worse_dc_hypothesis_never_replaces_the_edges(dc_model: WhisperAsr, clips: dict[str, Clip]) -> None:
    reviser = SpeechReviser([dc_model])
    checked = 0
    for cid in ("cards_001", "librivox_0880", "mfa_thoughts", "falsetto", "acoustic_corpus_5"):
        clip = clips[cid]
        audio = telephone(clip.audio)
        # The edge heard it right, fairly sure: the DC may only publish what scores no worse.
        edge = AsrResult(clip.text, _words(clip.text, 0.8), 0.8)
        rev = reviser.revise(f"t-{cid}", audio, edge)
        final = rev.result.text if rev.published else edge.text
        assert wer([clip.text], [final]) <= wer([clip.text], [edge.text]) + 1e-9, (cid, rev)
        # A wrong DC hypothesis (the same audio decoded without its start) never beats a sure edge.
        cut = audio[len(audio) // 2:]
        rev = reviser.revise(f"u-{cid}", cut, AsrResult(clip.text, _words(clip.text, 0.95), 0.95))
        assert not rev.published and rev.result.text == clip.text, (cid, rev)
        checked += 1
    assert checked == 5


def test_hallucination_on_a_short_noisy_turn_is_rejected(dc_model: WhisperAsr) -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000) * 0.003).astype(np.float32)  # 1 s of line noise, no words
    edge = AsrResult("neither did i", _words("neither did i", 0.7), 0.7)
    rev = SpeechReviser([dc_model]).revise("noise", telephone(noise), edge)
    assert not rev.published
    assert rev.result.text == "neither did i"


def test_the_dc_model_is_an_artifact_a_size_name_or_a_ctranslate2_directory(cache_dir: Path, tmp_path: Path) -> None:
    from models.edge_asr import whisper_folder

    assert whisper_folder(cache_dir, "base")[1:] == whisper_folder(cache_dir, "whisper_base")[1:]
    assert whisper_folder(cache_dir, "tiny.en")[1] == "whisper-tiny.en"
    own = tmp_path / "large-v3"
    own.mkdir()
    for f in ("model.bin", "config.json", "tokenizer.json"):
        (own / f).write_bytes(b"x")
    folder, name, _ = whisper_folder(cache_dir, str(own))
    assert folder == own and name == "whisper-large-v3"
    with pytest.raises(ValueError, match=r"lacks model\.bin"):
        whisper_folder(tmp_path, "medium")  # not dropped into cache_dir/whisper/medium
