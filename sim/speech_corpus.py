"""Test speech: a small field-radio / logistics corpus spoken by espeak-ng voices.

:func:`synthesize` renders one sentence as 16 kHz float32; :func:`build_conversation` lays
sentences out as alternating turns of several voices, one call leg per voice (or all on one
leg), and returns each leg's audio plus the reference turns (speaker, leg, start, end, text)
with start/end trimmed to where the voice is audible.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soxr

__all__ = [
    "SAMPLE_RATE",
    "SENTENCES",
    "VOICES",
    "RefTurn",
    "Conversation",
    "espeak_available",
    "synthesize",
    "build_conversation",
    "to_8k_int16",
    "telephone",
]

SAMPLE_RATE = 16000

# ~30 sentences of convoy / supply radio traffic. Four words are not in CMUdict
# (medevac, sitrep, waypoint, exfil): the vocabulary prompt has to bring their spellings.
SENTENCES: tuple[str, ...] = (
    "convoy bravo departing depot north at zero six hundred",
    "roger convoy bravo report at checkpoint alpha",
    "checkpoint alpha reached all vehicles accounted for",
    "copy that proceed to grid kilo seven four",
    "request resupply of diesel fuel and water at sector two",
    "how many pallets do you need over",
    "twelve pallets of water and four drums of diesel",
    "the forklift team will meet you at the loading dock",
    "be advised the bridge on route tango is closed",
    "understood we will take route zulu instead",
    "estimated arrival at the depot is fourteen thirty",
    "send a sitrep when you cross the river",
    "medevac requested for one casualty at waypoint charlie",
    "the medevac helicopter is ten minutes out",
    "mark the landing zone with green smoke",
    "green smoke visible we are landing now",
    "the drone reports a clear road to the next waypoint",
    "hold position until the recovery truck arrives",
    "the recovery truck is on its way with a spare tire",
    "fuel level at forty percent request a top up",
    "the tanker will refuel your vehicles at checkpoint bravo",
    "radio check how do you read me",
    "i read you loud and clear",
    "the cargo manifest shows thirty crates of medical supplies",
    "unload the medical supplies at the field hospital first",
    "weather is turning bad expect heavy rain tonight",
    "we will shelter the trucks in the warehouse",
    "the next convoy leaves at dawn with ammunition and rations",
    "the exfil team is standing by at the north gate",
    "all stations this is control out",
)

# Two clearly different espeak-ng voices (male default, female variant 3).
VOICES: tuple[str, ...] = ("en-us", "en-us+f3")


@dataclass(frozen=True, slots=True)
class RefTurn:
    """One reference turn: ``speaker`` spoke ``text`` on ``leg`` from ``start_s`` to ``end_s``."""

    speaker: str
    leg: str
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Conversation:
    """Audio per leg (16 kHz float32, all legs the same length) and the reference turns."""

    legs: dict[str, np.ndarray]
    turns: tuple[RefTurn, ...]

    @property
    def duration_s(self) -> float:
        return max(len(a) for a in self.legs.values()) / SAMPLE_RATE

    @property
    def speech_s(self) -> float:
        return sum(t.end_s - t.start_s for t in self.turns)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@lru_cache(maxsize=512)
def _synth_cached(text: str, voice: str, speed: int) -> bytes:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng)")
    wav = subprocess.run([exe, "-v", voice, "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return soxr.resample(x, rate, SAMPLE_RATE).astype(np.float32).tobytes()


def synthesize(text: str, voice: str = VOICES[0], speed: int = 175) -> np.ndarray:
    """``text`` spoken by espeak-ng ``voice`` as 16 kHz float32 mono."""
    return np.frombuffer(_synth_cached(text, voice, speed), dtype=np.float32).copy()


def _audible(x: np.ndarray, rel_db: float = -40.0) -> tuple[int, int]:
    """First and last sample of 10 ms frames louder than ``rel_db`` below the peak frame."""
    hop = SAMPLE_RATE // 100
    n = max(1, len(x) // hop)
    energy = np.array([float(np.mean(x[i * hop:(i + 1) * hop] ** 2)) for i in range(n)]) + 1e-12
    db = 10 * np.log10(energy / energy.max())
    loud = np.flatnonzero(db > rel_db)
    if len(loud) == 0:
        return 0, len(x)
    return int(loud[0] * hop), int(min(len(x), (loud[-1] + 1) * hop))


def build_conversation(
    sentences: tuple[str, ...] | list[str] = SENTENCES,
    voices: tuple[str, ...] = VOICES,
    *,
    gap_s: float = 0.7,
    lead_s: float = 0.5,
    one_leg: bool = False,
    noise_dbfs: float = -70.0,
    seed: int = 0,
) -> Conversation:
    """Sentence i is spoken by ``voices[i % len(voices)]``, turns ``gap_s`` apart.

    Speaker ``voices[k]`` is labelled ``"V{k+1}"`` and talks on leg ``"leg{k+1}"`` (or all on
    ``"leg1"`` when ``one_leg``). A little noise keeps silence from being digital zero.
    """
    rng = np.random.default_rng(seed)
    clips = [synthesize(s, voices[i % len(voices)]) for i, s in enumerate(sentences)]
    spans: list[tuple[int, int]] = []
    pos = int(lead_s * SAMPLE_RATE)
    for clip in clips:
        a, b = _audible(clip)
        start = pos - a  # the audible part starts at pos
        spans.append((start, start + len(clip)))
        pos = start + b + int(gap_s * SAMPLE_RATE)
    total = pos + int(lead_s * SAMPLE_RATE)
    leg_names = ["leg1"] if one_leg else [f"leg{k + 1}" for k in range(len(voices))]
    legs = {name: (rng.standard_normal(total) * 10 ** (noise_dbfs / 20)).astype(np.float32)
            for name in leg_names}
    turns: list[RefTurn] = []
    for i, (clip, (start, end)) in enumerate(zip(clips, spans)):
        k = i % len(voices)
        leg = "leg1" if one_leg else f"leg{k + 1}"
        legs[leg][start:end] += clip
        a, b = _audible(clip)
        turns.append(RefTurn(speaker=f"V{k + 1}", leg=leg, start_s=(start + a) / SAMPLE_RATE,
                             end_s=(start + b) / SAMPLE_RATE, text=sentences[i]))
    return Conversation(legs=legs, turns=tuple(turns))


def to_8k_int16(samples: np.ndarray) -> np.ndarray:
    """16 kHz float32 -> 8 kHz int16, what a G.711 sender samples."""
    x8 = soxr.resample(np.asarray(samples, dtype=np.float32), SAMPLE_RATE, 8000)
    return np.round(np.clip(x8, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def telephone(samples: np.ndarray, codec: str = "pcmu") -> np.ndarray:
    """16 kHz audio through a G.711 call and back: 8 kHz, companded, upsampled to 16 kHz."""
    from inference.resample import resample_8k_to_16k
    from topics import g711

    y = g711.decode(codec, g711.encode(codec, to_8k_int16(samples))).astype(np.float32) / 32768.0
    return resample_8k_to_16k(y)
