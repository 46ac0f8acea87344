"""Streaming speech recognition with PocketSphinx (en-us acoustic model inside the wheel).

- :class:`AsrModel` is the recognizer's configuration (acoustic model, language model,
  dictionary, extra words); :meth:`AsrModel.new_stream` makes one :class:`AsrStream` per
  audio stream. A stream owns its PocketSphinx ``Decoder`` and must be used by one thread
  at a time.
- :func:`build_domain_lm` turns a list of domain sentences into a trigram ARPA model
  (``pocketsphinx.lm.ArpaBoLM``) plus a dictionary of just its words. Pronunciations come
  from the bundled CMUdict; out-of-vocabulary words get one from espeak-ng's IPA mapped to
  CMU phones, or from a crude letter-to-sound fallback, and are reported in
  :attr:`DomainLm.oov`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "TELEPHONE_CMNINIT",
    "FILLERS",
    "Word",
    "AsrResult",
    "AsrModel",
    "AsrStream",
    "DomainLm",
    "build_domain_lm",
    "normalize_text",
    "default_dict_path",
    "load_dictionary",
    "ipa_to_cmu",
    "letters_to_cmu",
    "median_f0",
]

SAMPLE_RATE = 16000
# Cepstral mean of G.711 speech (espeak-ng voices, 8 -> 16 kHz, high band filled at -30 dBFS)
# after 20 utterances, as PocketSphinx's live CMN left it. The model's own default (40,3,-1)
# is a wideband mean; live CMN keeps adapting from whichever start it is given.
TELEPHONE_CMNINIT = "63.22,-24.65,32.20,-7.33,-3.23,3.98,-11.15,-5.76,-0.59,3.76,-2.16,2.46,4.67"
_DECODER_INIT = threading.Lock()
FILLERS = frozenset({"<s>", "</s>", "<sil>", "[noise]", "[breath]", "[cough]", "[laugh]", "[um]", "[uh]"})


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word: seconds from the start of the utterance's audio, posterior probability."""

    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True, slots=True)
class AsrResult:
    """The final hypothesis of one utterance. ``confidence``: mean word confidence (0 if no words)."""

    text: str
    words: tuple[Word, ...]
    confidence: float
    decode_s: float = 0.0


@dataclass(frozen=True)
class AsrModel:
    """How to build decoders. ``lm_path``/``dict_path`` None: the generic en-us LM / full CMUdict.

    Telephone audio (G.711, 8 kHz) reaches this 16 kHz model with nothing above 4 kHz.
    Measured remedies, on by default (G.711 espeak-ng speech, domain LM):

    - ``hf_fill_dbfs``: a fixed noise floor in the empty 4-8 kHz band (the empty band drives
      the upper cepstra far from anything seen in training);
    - ``remove_noise=False``: no spectral noise subtraction in the front end;
    - ``cmninit``: cepstral mean normalisation starts from a telephone-band mean, not the
      wideband one (first utterance of a stream: WER ~0.6 -> ~0.1);
    - vocal tract length normalisation by pitch: a stream whose voiced frames have a median
      F0 of at least ``vtln_f0_split_hz`` decodes with frequency warp ``vtln_high_warp``
      (female voice: WER 0.20 -> 0.08; male voice unchanged). The warp is chosen on the
      stream's first voiced utterance, which is then decoded again with it.

    For wideband input set ``hf_fill_dbfs=None, cmninit=None, remove_noise=True``.
    """

    lm_path: Path | None = None
    dict_path: Path | None = None
    extra_words: tuple[tuple[str, str], ...] = ()
    name: str = "pocketsphinx-en-us"
    version: str = "generic"
    language_weight: float = 10.0
    beam: float = 1e-60
    word_beam: float = 1e-40
    remove_noise: bool = False
    hf_fill_dbfs: float | None = -30.0
    cmninit: str | None = TELEPHONE_CMNINIT
    vtln_f0_split_hz: float | None = 165.0
    vtln_high_warp: float = 1.3
    extra_config: tuple[tuple[str, object], ...] = ()  # any other PocketSphinx option

    def decoder_config(self, warp: float = 1.0) -> dict[str, object]:
        cfg: dict[str, object] = {
            "loglevel": "FATAL",
            "hmm": str(acoustic_model_dir(remove_noise=self.remove_noise)),
            "lw": self.language_weight,
            "beam": self.beam,
            "wbeam": self.word_beam,
            "bestpath": True,
        }
        # Always explicit, 1.0 included: the front end caches the last warp string in a
        # process-wide static, and a decoder built without one can leave the next decoder
        # with an equal string silently unwarped.
        cfg["warp_type"] = "inverse_linear"
        cfg["warp_params"] = f"{warp:.4f}"
        if self.cmninit is not None:
            cfg["cmninit"] = self.cmninit
        if self.lm_path is not None:
            cfg["lm"] = str(self.lm_path)
        if self.dict_path is not None:
            cfg["dict"] = str(self.dict_path)
        cfg.update(dict(self.extra_config))
        return cfg

    def new_stream(self) -> "AsrStream":
        return AsrStream(self)


def acoustic_model_dir(remove_noise: bool = True) -> Path:
    """The bundled en-us acoustic model, or a linked copy whose ``feat.params`` says
    ``-remove_noise no`` (``feat.params`` overrides decoder arguments, so it has to be the file)."""
    from pocketsphinx import get_model_path

    src = Path(get_model_path()) / "en-us" / "en-us"
    if remove_noise:
        return src
    dst = Path(tempfile.gettempdir()) / f"edge-offload-ps-en-us-nonr-{os.getuid()}"
    if (dst / "feat.params").exists():
        return dst
    tmp = Path(tempfile.mkdtemp(prefix="ps-hmm-", dir=dst.parent))
    for f in src.iterdir():
        if f.name != "feat.params":
            (tmp / f.name).symlink_to(f)
    params = (src / "feat.params").read_text().replace("-remove_noise yes", "-remove_noise no")
    (tmp / "feat.params").write_text(params)
    try:
        tmp.rename(dst)
    except OSError:  # another thread or process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _hf_noise(dbfs: float, seconds: float = 4.0, seed: int = 7) -> np.ndarray:
    """A loop of white noise high-passed above 4.2 kHz at ``dbfs`` RMS, int16-scaled floats."""
    from scipy.signal import butter, sosfilt

    sos = butter(8, 4200, "highpass", fs=SAMPLE_RATE, output="sos")
    n = int(seconds * SAMPLE_RATE)
    noise = sosfilt(sos, np.random.default_rng(seed).standard_normal(2 * n))[n:]  # settled half
    noise *= 10 ** (dbfs / 20) / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
    return (noise * 32767.0).astype(np.float32)


class AsrStream:
    """PocketSphinx decoding of one audio stream: ``start()``, ``feed()``, ``partial()``, ``finish()``.

    One decoder; until the warp is chosen it also keeps the utterance's audio (to measure
    pitch and decode it again). Use from one thread at a time.
    """

    def __init__(self, model: AsrModel) -> None:
        self.model = model
        self.warp = 1.0
        self._decoder = self._make_decoder(self.warp)
        self._choosing = model.vtln_f0_split_hz is not None
        self._utt_audio: list[np.ndarray] = []
        self._fill = _hf_noise(model.hf_fill_dbfs) if model.hf_fill_dbfs is not None else None
        self._fill_pos = 0
        self._frame_s = 1.0 / float(self._decoder.config["frate"])
        self.active = False
        self.fed_samples = 0
        self.f0_hz: float | None = None

    def _make_decoder(self, warp: float) -> Any:
        from pocketsphinx import Decoder

        with _DECODER_INIT:  # the front end's warp set-up uses process-wide statics
            decoder = Decoder(**self.model.decoder_config(warp))
        words = self.model.extra_words
        for i, (word, phones) in enumerate(words):
            decoder.add_word(word, phones, i == len(words) - 1)  # rebuild the search once, at the end
        return decoder

    def start(self) -> None:
        """Begin an utterance."""
        if self.active:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self.active = True
        self.fed_samples = 0
        self._utt_audio = []

    def feed(self, samples: np.ndarray) -> None:
        """Decode more 16 kHz audio (float32 in [-1, 1] or int16)."""
        if not self.active:
            raise RuntimeError("feed() outside an utterance: call start() first")
        if not len(samples):
            return
        pcm = self._prepare(samples)
        if self._choosing:
            self._utt_audio.append(pcm)
        self._decoder.process_raw(pcm.tobytes(), False, False)
        self.fed_samples += len(samples)

    def _prepare(self, samples: np.ndarray) -> np.ndarray:
        x = samples.astype(np.float32) if samples.dtype == np.int16 else np.asarray(samples, np.float32) * 32767.0
        if self._fill is not None:
            idx = (self._fill_pos + np.arange(len(x))) % len(self._fill)
            x = x + self._fill[idx]
            self._fill_pos = int((self._fill_pos + len(x)) % len(self._fill))
        return np.clip(x, -32768, 32767).astype(np.int16)

    def partial(self) -> str:
        """The current best hypothesis of the utterance in progress (may change)."""
        if not self.active:
            return ""
        hyp = self._decoder.hyp()
        return normalize_hyp(hyp.hypstr) if hyp is not None else ""

    def finish(self) -> AsrResult:
        """End the utterance; return its final hypothesis with word timings and confidences."""
        if not self.active:
            return AsrResult("", (), 0.0)
        t0 = time.perf_counter()
        self.active = False
        self._decoder.end_utt()
        result = self._result()
        if self._choosing and self._utt_audio:
            audio = np.concatenate(self._utt_audio)
            self._utt_audio = []
            f0, voiced = median_f0(audio)
            if voiced >= 25:  # half a second of voicing: enough to tell
                self._choosing = False
                self.f0_hz = f0
                assert self.model.vtln_f0_split_hz is not None
                if f0 >= self.model.vtln_f0_split_hz and self.model.vtln_high_warp != self.warp:
                    self.warp = self.model.vtln_high_warp
                    self._decoder = self._make_decoder(self.warp)
                    self._decoder.start_utt()
                    self._decoder.process_raw(audio.tobytes(), False, True)
                    self._decoder.end_utt()
                    result = self._result()
        return AsrResult(result.text, result.words, result.confidence, time.perf_counter() - t0)

    def _result(self) -> AsrResult:
        """The decoder's final words with timings and posterior probabilities."""
        hyp = self._decoder.hyp()
        if hyp is None or not hyp.hypstr.strip():
            return AsrResult("", (), 0.0)
        words: list[Word] = []
        for seg in self._decoder.seg():
            # The binding already converts the log posterior with the decoder's logmath:
            # ``seg.prob`` is the word's posterior probability (needs bestpath=True).
            token = seg.word
            if token in FILLERS or token.startswith("["):
                continue
            words.append(Word(word=_base_word(token), start_s=round(seg.start_frame * self._frame_s, 3),
                              end_s=round((seg.end_frame + 1) * self._frame_s, 3),
                              confidence=float(min(1.0, max(0.0, seg.prob)))))
        text = " ".join(w.word for w in words)
        confidence = float(np.mean([w.confidence for w in words])) if words else 0.0
        return AsrResult(text, tuple(words), confidence)


def median_f0(samples: np.ndarray, rate: int = SAMPLE_RATE, fmin: float = 60.0,
              fmax: float = 400.0) -> tuple[float, int]:
    """Median pitch (Hz) of the loud, clearly periodic 40 ms frames; and how many there were."""
    x = np.asarray(samples, dtype=np.float64)
    frame, hop = int(0.04 * rate), int(0.02 * rate)
    if len(x) < frame:
        return 0.0, 0
    lo, hi = int(rate / fmax), int(rate / fmin)
    starts = np.arange(0, len(x) - frame, hop)
    frames = np.stack([x[s:s + frame] for s in starts])
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.mean(frames ** 2, axis=1)
    loud = frames[energy >= 0.3 * np.mean(energy)]
    if not len(loud):
        return 0.0, 0
    spec = np.fft.rfft(loud, n=2 * frame, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :frame]
    ac /= ac[:, :1] + 1e-12
    lags = lo + np.argmax(ac[:, lo:hi], axis=1)
    peak = ac[np.arange(len(ac)), lags]
    f0 = rate / lags[peak > 0.5]
    return (float(np.median(f0)) if len(f0) else 0.0, int(len(f0)))


def _base_word(token: str) -> str:
    """``read(2)`` -> ``read``: alternate pronunciations are the same word."""
    return re.sub(r"\(\d+\)$", "", token)


def normalize_hyp(text: str) -> str:
    return " ".join(_base_word(t) for t in text.split() if t not in FILLERS and not t.startswith("["))


_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize_text(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces: the form LMs are built from and WER is scored on."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


# ---------------------------------------------------------------------------- domain LM

def default_dict_path() -> Path:
    from pocketsphinx import get_model_path

    return Path(get_model_path()) / "en-us" / "cmudict-en-us.dict"


def load_dictionary(path: Path | None = None) -> dict[str, list[str]]:
    """CMUdict-format file -> {word: [pronunciation, ...]} (alternates ``word(2)`` folded in)."""
    pron: dict[str, list[str]] = {}
    with open(path or default_dict_path(), encoding="utf-8") as f:
        for line in f:
            parts = line.split(maxsplit=1)
            if len(parts) == 2:
                pron.setdefault(_base_word(parts[0]), []).append(parts[1].split("#")[0].strip())
    return pron


@dataclass
class DomainLm:
    """A built domain LM: files, its vocabulary, and how each out-of-vocabulary word was handled."""

    lm_path: Path
    dict_path: Path
    words: tuple[str, ...]
    oov: dict[str, tuple[str, str]] = field(default_factory=dict)  # word -> (phones, source)

    def model(self, name: str = "pocketsphinx-en-us", version: str = "domain", **kw: object) -> AsrModel:
        return AsrModel(lm_path=self.lm_path, dict_path=self.dict_path, name=name, version=version, **kw)  # type: ignore[arg-type]


def build_domain_lm(sentences: Iterable[str], out_dir: Path | None = None,
                    discount_mass: float = 0.5) -> DomainLm:
    """Trigram ARPA LM + pronunciation dictionary for ``sentences``; OOV words get phones too."""
    from pocketsphinx.lm import ArpaBoLM

    lines = [normalize_text(s) for s in sentences]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("no sentences to build a language model from")
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="domain-lm-"))
    out.mkdir(parents=True, exist_ok=True)
    lm = ArpaBoLM(text="\n".join(lines), add_start=True, discount_mass=discount_mass)
    lm.compute()
    buf = io.StringIO()
    lm.write(buf)
    lm_path = out / "domain.arpa"
    lm_path.write_text(buf.getvalue(), encoding="utf-8")

    vocab = sorted({w for line in lines for w in line.split()})
    cmu = load_dictionary()
    oov: dict[str, tuple[str, str]] = {}
    entries: list[str] = []
    for word in vocab:
        prons = cmu.get(word)
        if prons:
            entries.extend(f"{word if i == 0 else f'{word}({i + 1})'} {p}" for i, p in enumerate(prons))
            continue
        phones, source = pronounce_oov(word)
        oov[word] = (phones, source)
        entries.append(f"{word} {phones}")
    dict_path = out / "domain.dict"
    dict_path.write_text("\n".join(entries) + "\n", encoding="utf-8")
    return DomainLm(lm_path=lm_path, dict_path=dict_path, words=tuple(vocab), oov=oov)


def pronounce_oov(word: str) -> tuple[str, str]:
    """CMU phones for a word not in CMUdict: ``(phones, "espeak-ng" | "letters")``."""
    ipa = _espeak_ipa(word)
    if ipa:
        phones = ipa_to_cmu(ipa)
        if phones:
            return phones, "espeak-ng"
    return letters_to_cmu(word), "letters"


def _espeak_ipa(word: str) -> str | None:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "-v", "en-us", "-q", "--ipa=3", word], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


# IPA as espeak-ng writes it for en-us -> CMU/ARPAbet. Longest match first.
_IPA: dict[str, str] = {
    "tʃ": "CH", "dʒ": "JH", "eɪ": "EY", "aɪ": "AY", "ɔɪ": "OY", "aʊ": "AW", "oʊ": "OW", "əʊ": "OW",
    "ɑːɹ": "AA R", "ɔːɹ": "AO R", "ɛɹ": "EH R", "ɪɹ": "IH R", "ʊɹ": "UH R", "iə": "IY AH",
    "iː": "IY", "uː": "UW", "ɑː": "AA", "ɔː": "AO", "ɜː": "ER", "ɚ": "ER", "ɝ": "ER",
    "i": "IY", "ɪ": "IH", "ᵻ": "IH", "e": "EH", "ɛ": "EH", "æ": "AE", "a": "AE", "ɐ": "AH", "ə": "AH",
    "ʌ": "AH", "ɑ": "AA", "ɒ": "AA", "ɔ": "AO", "o": "OW", "ʊ": "UH", "u": "UW", "ɜ": "ER",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G", "g": "G", "f": "F", "v": "V",
    "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M",
    "n": "N", "ŋ": "NG", "l": "L", "ɫ": "L", "ɹ": "R", "r": "R", "ɾ": "D", "ʔ": "T", "w": "W",
    "j": "Y", "x": "K", "ç": "HH",
}
_IPA_KEYS = sorted(_IPA, key=len, reverse=True)
_IPA_DROP = str.maketrans("", "", "ˈˌ‍.̩͡ ")


def ipa_to_cmu(ipa: str) -> str:
    """Map espeak-ng IPA to space-separated CMU phones (unknown symbols are skipped)."""
    s = ipa.translate(_IPA_DROP)
    phones: list[str] = []
    i = 0
    while i < len(s):
        for key in _IPA_KEYS:
            if s.startswith(key, i):
                phones.append(_IPA[key])
                i += len(key)
                break
        else:
            i += 1
    return " ".join(phones)


_LETTERS: dict[str, str] = {
    "tch": "CH", "sh": "SH", "ch": "CH", "th": "TH", "ph": "F", "ng": "NG", "ck": "K", "qu": "K W",
    "ee": "IY", "ea": "IY", "oo": "UW", "ai": "EY", "ay": "EY", "oa": "OW", "ou": "AW", "ow": "OW",
    "oi": "OY", "oy": "OY", "er": "ER", "ar": "AA R", "or": "AO R",
    "a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH", "i": "IH",
    "j": "JH", "k": "K", "l": "L", "m": "M", "n": "N", "o": "AA", "p": "P", "q": "K", "r": "R",
    "s": "S", "t": "T", "u": "AH", "v": "V", "w": "W", "x": "K S", "y": "Y", "z": "Z",
}
_LETTER_KEYS = sorted(_LETTERS, key=len, reverse=True)


def letters_to_cmu(word: str) -> str:
    """A crude spelling -> CMU phones fallback for when espeak-ng is not installed."""
    w = re.sub(r"[^a-z]", "", word.lower())
    phones: list[str] = []
    i = 0
    while i < len(w):
        if w[i] == "e" and i == len(w) - 1 and phones:  # silent final e
            break
        for key in _LETTER_KEYS:
            if w.startswith(key, i):
                phones.append(_LETTERS[key])
                i += len(key)
                break
        else:
            i += 1
    return " ".join(phones) or "AH"
