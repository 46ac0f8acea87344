"""Whisper speech recognition (CTranslate2 models through faster-whisper's front end).

One :class:`WhisperAsr` holds one CTranslate2 ``Whisper`` model for the whole process; it
keeps no per-stream state, so every call leg shares it (a leg keeps only its audio). CTranslate2
releases the GIL and is safe to call from several threads.

:meth:`WhisperAsr.transcribe` decodes a *batch* of utterances in one encoder call and one
``generate`` call (batched across legs by :class:`models.whisper_batch.WhisperBatcher`):

- the encoder runs on a window shorter than Whisper's fixed 30 s when the utterance allows:
  the utterance plus ``tail_s`` of silence, at least ``min_window_s``, rounded up to
  ``bucket_s`` (CTranslate2 accepts shorter inputs and the encoder's cost falls with them:
  tiny.en, 2 threads, 24 held-out Piper sentences through G.711: 30 s window 9.6 s WER 0.037,
  10 s window 2.3 s WER 0.033). Windows of about the utterance's own length are cheaper
  still but make Whisper loop ("... last summer. My sister bought ...", WER 0.4-0.6), so
  the floor stays at 10 s. Utterances longer than 30 s are the caller's to cut (the VAD
  cuts at ``max_speech_s``);
- ``words=True`` adds word timestamps and word probabilities (cross-attention alignment);
- the segment confidence is calibrated from word probabilities, the average log-probability
  and the no-speech probability (:func:`segment_confidence`);
- ``prompt`` (Whisper's "previous text": the adapted vocabulary, the conversation's earlier
  turns) conditions the decoder.

Device: CUDA with float16 when CTranslate2 sees a GPU, else CPU int8 (:func:`pick_device`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "MAX_SECONDS",
    "Word",
    "AsrResult",
    "DecodeOptions",
    "LogMel",
    "WhisperAsr",
    "collapse_repeats",
    "pick_device",
    "segment_confidence",
]

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
_HOP = 160  # feature frames are 10 ms
_FRAMES_PER_S = SAMPLE_RATE // _HOP
# Speech runs at most ~4 words (~6 tokens) a second: more tokens than this per second of
# audio is a repetition loop (short encoder windows make Whisper loop more often).
_TOKENS_PER_S = 8
# The shortest back-to-back repeated word run taken for a decoding loop (see collapse_repeats).
MIN_REPEAT_SPAN = 3


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word: seconds from the start of the utterance's audio, probability in [0, 1]."""

    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True, slots=True)
class AsrResult:
    """The hypothesis of one utterance.

    ``confidence``: calibrated segment confidence (see :func:`segment_confidence`), 0 for no
    words; ``avg_logprob``: mean token log-probability of the decoded text; ``no_speech_prob``:
    Whisper's probability that the audio holds no speech; ``decode_s``: wall time of the batch."""

    text: str
    words: tuple[Word, ...]
    confidence: float
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    decode_s: float = 0.0


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How to decode. ``beam_size`` 1 is greedy; ``temperatures`` after the first are tried when
    a hypothesis fails the fallback tests (compression ratio, log-probability)."""

    beam_size: int = 1
    words: bool = True
    prompt: str | None = None
    temperatures: tuple[float, ...] = (0.0,)
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    max_new_tokens: int = 200


def pick_device(device: str = "auto", compute_type: str = "auto") -> tuple[str, str]:
    """``("cuda", "float16")`` when CTranslate2 sees a GPU (and ``device`` is auto/cuda), else
    ``("cpu", "int8")``; an explicit ``compute_type`` is kept."""
    import ctranslate2

    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


def segment_confidence(word_probs: Sequence[float], avg_logprob: float, no_speech_prob: float) -> float:
    """One number in [0, 1] for "this utterance's words are right".

    The geometric mean of the word probabilities (a single near-zero word pulls it down,
    unlike the arithmetic mean), blended with ``exp(avg_logprob)`` of the whole decode, times
    ``1 - no_speech_prob``. On the held-out bench calls it ranks utterances by WER (see
    ``bench.speech``: ``confidence_wer_low`` vs ``confidence_wer_high``)."""
    if not word_probs:
        return 0.0
    p = np.clip(np.asarray(word_probs, dtype=np.float64), 1e-4, 1.0)
    geo = float(np.exp(np.mean(np.log(p))))
    seq = math.exp(min(0.0, avg_logprob))
    conf = (0.7 * geo + 0.3 * seq) * (1.0 - float(no_speech_prob))
    return float(min(1.0, max(0.0, conf)))


def _compression_ratio(text: str) -> float:
    import zlib

    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


class LogMel:
    """Whisper's log-mel spectrogram (n_fft 400, hop 160, per-clip dynamic range of 8 in log10)
    with ``torch.stft``: the same numbers as faster-whisper's NumPy ``FeatureExtractor`` (within
    1e-5) at about a third of its CPU (10 s window, one thread: ~6 ms instead of ~16 ms)."""

    def __init__(self, n_mels: int = 80) -> None:
        import torch
        from faster_whisper.feature_extractor import FeatureExtractor

        self._filters = torch.from_numpy(FeatureExtractor.get_mel_filters(SAMPLE_RATE, 400, n_mels).astype(np.float32))
        self._window = torch.hann_window(400)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """(batch, samples) float32 -> (batch, n_mels, samples // 160 + 1) float32."""
        import torch

        with torch.inference_mode():
            spec = torch.stft(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), 400, _HOP,
                              window=self._window, return_complex=True)
            power = spec[..., :-1].abs() ** 2
            log_spec = torch.clamp(self._filters @ power, min=1e-10).log10()
            log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
            return ((log_spec + 4.0) / 4.0).numpy()


class WhisperAsr:
    """A loaded Whisper model (CTranslate2 folder: model.bin, config.json, tokenizer.json,
    vocabulary.txt), shared by every stream. ``name``/``version`` identify it on the wire.
    ``cpu_threads``: threads of one call; ``parallel``: calls that may run at once (CTranslate2's
    ``inter_threads``), each on ``cpu_threads`` threads."""

    def __init__(self, model_dir: Path, name: str, version: str, *, device: str = "auto",
                 compute_type: str = "auto", cpu_threads: int = 2, language: str = "en",
                 min_window_s: float = 10.0, tail_s: float = 3.0, bucket_s: float = 5.0, parallel: int = 1) -> None:
        import ctranslate2
        import tokenizers
        from faster_whisper.tokenizer import Tokenizer

        self.model_dir = Path(model_dir)
        self.name = name
        self.version = version
        self.device, self.compute_type = pick_device(device, compute_type)
        self.model = ctranslate2.models.Whisper(str(self.model_dir), device=self.device,
                                                compute_type=self.compute_type, intra_threads=cpu_threads,
                                                inter_threads=parallel)
        self.parallel = parallel
        config = json.loads((self.model_dir / "config.json").read_text())
        n_mels = int(config.get("num_mel_bins", 80))
        self._mel = LogMel(n_mels)
        hf = tokenizers.Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.multilingual = bool(self.model.is_multilingual)
        self.tokenizer = Tokenizer(hf, self.multilingual, task="transcribe",
                                   language=language if self.multilingual else None)
        self.min_window_s = min_window_s
        self.tail_s = tail_s
        self.bucket_s = bucket_s
        self._frames_per_token = 2  # encoder output = features / 2; alignment is in 20 ms steps
        self._slots = threading.BoundedSemaphore(parallel)  # CTranslate2 calls at once (its inter_threads)

    # -- features ------------------------------------------------------------------------

    def window_samples(self, n_samples: int) -> int:
        """Encoder window for an utterance of ``n_samples`` (see the module doc)."""
        step = max(1, int(self.bucket_s * SAMPLE_RATE))
        need = max(n_samples + int(self.tail_s * SAMPLE_RATE), int(self.min_window_s * SAMPLE_RATE))
        return min(-(-need // step) * step, int(MAX_SECONDS * SAMPLE_RATE))

    def features(self, clips: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
        """Log-mel features of ``clips`` padded with silence to one length: (batch, mels, frames)."""
        n = self.window_samples(max(len(c) for c in clips))
        x = np.zeros((len(clips), n), dtype=np.float32)
        for row, clip in zip(x, clips, strict=True):
            c = np.asarray(clip, dtype=np.float32)[:n]
            row[:len(c)] = c
        feats = np.ascontiguousarray(self._mel(x)[:, :, : n // _HOP])
        return feats, feats.shape[-1]

    def warm_up(self) -> None:
        """Decode 1 s of noise with and without word timing, so the first call's set-up (kernel
        selection, allocations) is done before traffic."""
        noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
        for words in (True, False):
            self.transcribe([noise], DecodeOptions(words=words, max_new_tokens=8))

    # -- decoding ------------------------------------------------------------------------

    def _prompt(self, prompt: str | None) -> list[int]:
        tok = self.tokenizer
        tokens: list[int] = []
        if prompt and prompt.strip():
            text_tokens = tok.encode(" " + prompt.strip())[-223:]
            tokens = [tok.sot_prev, *text_tokens]
        return [*tokens, *tok.sot_sequence, tok.no_timestamps]

    def transcribe(self, clips: Sequence[np.ndarray], options: DecodeOptions | None = None,
                   prompts: Sequence[str | None] | None = None) -> list[AsrResult]:
        """Decode a batch of 16 kHz float32 utterances (each at most 30 s) in one model call
        (one call per distinct prompt). ``prompts`` (one per clip) override ``options.prompt``."""
        import ctranslate2

        if not clips:
            return []
        opts = options or DecodeOptions()
        per_clip = list(prompts) if prompts is not None else [opts.prompt] * len(clips)
        if len(set(per_clip)) > 1:
            # CTranslate2 needs <|startoftranscript|> at one position in a batch: one call per prompt.
            out: list[AsrResult | None] = [None] * len(clips)
            for prompt in dict.fromkeys(per_clip):
                idx = [i for i, p in enumerate(per_clip) if p == prompt]
                for i, r in zip(idx, self.transcribe([clips[i] for i in idx], opts, [prompt] * len(idx)), strict=True):
                    out[i] = r
            return [r for r in out if r is not None]
        t0 = time.perf_counter()
        feats, n_frames = self.features(clips)
        prompt_tokens = [self._prompt(p) for p in per_clip]
        with self._slots:
            encoded = self.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
            max_new = min(opts.max_new_tokens, int(_TOKENS_PER_S * max(len(c) for c in clips) / SAMPLE_RATE) + 8)
            results = self._generate(encoded, feats, prompt_tokens, opts, max_new)
            tokens = [r[0] for r in results]
            aligned: list[list[dict] | None] = (self._align(encoded, feats, tokens, n_frames) if opts.words
                                                 else [None] * len(clips))
        seconds = time.perf_counter() - t0
        return [self._result(text_tokens, avg_lp, no_speech, words, len(clip) / SAMPLE_RATE, seconds)
                for clip, (text_tokens, avg_lp, no_speech), words in zip(clips, results, aligned, strict=True)]

    def _generate(self, encoded: object, feats: np.ndarray, prompts: list[list[int]],
                  opts: DecodeOptions, max_new: int) -> list[tuple[list[int], float, float]]:
        """Greedy/beam decode with temperature fallback per item: (tokens, avg_logprob, no_speech_prob)."""
        n = len(prompts)
        best: list[tuple[list[int], float, float] | None] = [None] * n
        todo = list(range(n))
        for k, temperature in enumerate(opts.temperatures):
            if not todo:
                break
            enc = encoded if len(todo) == n else self._encode_rows(feats, todo)
            kwargs: dict[str, object] = {"beam_size": opts.beam_size if temperature == 0 else 1,
                                         "patience": 1.0, "length_penalty": 1.0,
                                         "max_length": max_new + max(len(p) for p in prompts),
                                         "return_scores": True, "return_no_speech_prob": True,
                                         "suppress_blank": True, "suppress_tokens": [-1],
                                         "max_initial_timestamp_index": 50}
            if temperature > 0:
                kwargs.update(sampling_topk=0, sampling_temperature=temperature, num_hypotheses=1)
            res = self.model.generate(enc, [prompts[i] for i in todo], **kwargs)
            retry = []
            for i, r in zip(todo, res, strict=True):
                tokens = [t for t in r.sequences_ids[0] if t < self.tokenizer.eot]
                # CTranslate2's score is the cumulative log-probability / length (length_penalty 1)
                cand = (tokens, float(r.scores[0]) if r.scores else 0.0, float(r.no_speech_prob))
                prev = best[i]
                if prev is None or cand[1] > prev[1]:
                    best[i] = cand
                text = self.tokenizer.decode(tokens)
                failed = (_compression_ratio(text) > opts.compression_ratio_threshold
                          or cand[1] < opts.logprob_threshold)
                if failed and k + 1 < len(opts.temperatures) and cand[2] < 0.6:
                    retry.append(i)
            todo = retry
        return [b if b is not None else ([], 0.0, 1.0) for b in best]

    def _encode_rows(self, feats: np.ndarray, rows: list[int]) -> object:
        """The encoder output of some rows of a batch (encoded again: works on every device)."""
        import ctranslate2

        return self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[rows])), to_cpu=False)

    def _align(self, encoded: object, feats: np.ndarray, tokens: list[list[int]],
               n_frames: int) -> list[list[dict] | None]:
        idx = [i for i, t in enumerate(tokens) if t]
        out: list[list[dict] | None] = [[] for _ in tokens]
        if not idx:
            return out
        enc = encoded if len(idx) == len(tokens) else self._encode_rows(feats, idx)
        tok = self.tokenizer
        results = self.model.align(enc, tok.sot_sequence, [tokens[i] for i in idx], n_frames,
                                   median_filter_width=7)
        for i, res in zip(idx, results, strict=True):
            out[i] = _words_from_alignment(tok, tokens[i], res)
        return out

    def _result(self, tokens: list[int], avg_logprob: float, no_speech: float, words: list[dict] | None,
                duration_s: float, seconds: float) -> AsrResult:
        text = self.tokenizer.decode(tokens).strip()
        if words is None:  # no word timing asked: one pseudo-probability per word
            ws: tuple[Word, ...] = ()
            conf = segment_confidence([math.exp(min(0.0, avg_logprob))] * max(1, len(text.split())),
                                      avg_logprob, no_speech) if text else 0.0
            return AsrResult(text, ws, conf, avg_logprob, no_speech, seconds)
        ws = collapse_repeats(tuple(Word(w["word"].strip(), round(min(float(w["start"]), duration_s), 3),
                                         round(min(max(float(w["end"]), float(w["start"])), duration_s), 3),
                                         float(min(1.0, max(0.0, w["probability"]))))
                                    for w in words if w["word"].strip()))
        conf = segment_confidence([w.confidence for w in ws], avg_logprob, no_speech)
        return AsrResult(" ".join(w.word for w in ws), ws, conf, avg_logprob, no_speech, seconds)


def _word_key(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == "'")


def collapse_repeats(words: tuple[Word, ...], min_span: int = MIN_REPEAT_SPAN) -> tuple[Word, ...]:
    """Drop Whisper's repetition loops: a run of at least ``min_span`` words that comes again
    right after itself ("we found an old map. we found an old map.") is kept once.

    A decode that loops repeats the words it just emitted; real speech repeats a phrase of
    three or more words back to back rarely enough that keeping one copy is the better bet
    (shorter repeats such as "no, no" or "thank you, thank you" are left alone). Words are
    compared without case and punctuation; the first copy keeps its timings."""
    keys = [_word_key(w.word) for w in words]
    out = list(words)
    changed = True
    while changed:
        changed = False
        n = len(keys)
        for span in range(n // 2, min_span - 1, -1):
            for i in range(0, n - 2 * span + 1):
                if keys[i:i + span] == keys[i + span:i + 2 * span] and any(keys[i:i + span]):
                    del keys[i + span:i + 2 * span]
                    del out[i + span:i + 2 * span]
                    changed = True
                    break
            if changed:
                break
    return tuple(out)


def _words_from_alignment(tok: object, text_tokens: list[int], result: object) -> list[dict]:
    """Cross-attention alignment -> words with start/end seconds and mean token probability."""
    probs = result.text_token_probs  # type: ignore[attr-defined]
    pairs = result.alignments  # type: ignore[attr-defined]
    text_idx = np.array([p[0] for p in pairs])
    time_idx = np.array([p[1] for p in pairs])
    words, word_tokens = tok.split_to_word_tokens(text_tokens + [tok.eot])  # type: ignore[attr-defined]
    if len(word_tokens) <= 1 or not len(text_idx):
        return []
    bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
    jump_times = time_idx[jumps] / 50.0  # 20 ms per encoder step
    starts = jump_times[bounds[:-1]]
    ends = jump_times[bounds[1:]]
    return [{"word": w, "start": s, "end": e, "probability": float(np.mean(probs[i:j])) if j > i else 0.0}
            for w, s, e, i, j in zip(words, starts, ends, bounds[:-1], bounds[1:])]
