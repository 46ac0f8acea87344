"""DC advanced inference on speech hard examples: more than the edge can afford, never worse.

For each low-confidence utterance the edge sent, :class:`SpeechReviser`

1. decodes it again with every DC model (beam search, temperature fallback) in the
   conversation's context (the adapted vocabulary prompt plus the earlier revised turns), on the
   utterance *with its neighbouring audio* when the caller has it (``lead_s``/``tail_s``): words
   at the utterance's edges are not cut off, and the words that fall in the padding are dropped;
2. rejects hypotheses that look like hallucinations: a high no-speech probability, more words
   than the audio's duration allows, a repeated phrase the edge did not hear;
3. combines the edge's words and the best DC hypothesis word by word (ROVER-style: the two
   word sequences aligned, each disagreement settled by the higher confidence, a word only
   the edge heard stays, a word only the DC heard is added when the DC is confident of it);
4. publishes the combination only when the calibrated rule (:class:`ReviseRule`) says it is
   better: the DC's confidence beats the edge's by ``min_gain``. Otherwise the edge's
   hypothesis stands and nothing is published.

The result is a :class:`Revision`: text, words with times, confidence, which model made it and
whether it is published (and why not).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.text import normalize
from models.whisper_asr import SAMPLE_RATE, AsrResult, DecodeOptions, WhisperAsr, Word, segment_confidence

__all__ = ["Revision", "ReviseRule", "SpeechReviser", "DC_OPTIONS", "combine", "hallucination"]

DC_OPTIONS = DecodeOptions(beam_size=5, words=True, temperatures=(0.0, 0.2, 0.4, 0.6))
_CONTEXT_TURNS = 4
_MAX_CONVERSATIONS = 1000


@dataclass(frozen=True)
class ReviseRule:
    """When a DC hypothesis may replace the edge's (calibrated on the real-speech dev set,
    ``bench.real_speech``; see docs/real-speech.md)."""

    min_gain: float = 0.05  # the DC's confidence must beat the edge's by this much
    max_no_speech: float = 0.5  # a DC hypothesis whose no-speech probability is higher is rejected
    max_words_per_s: float = 4.5  # words per second of audio above this: a hallucination
    min_repeat: int = 3  # a phrase of this many words said twice (and not by the edge): a loop
    keep_below: float = 0.5  # a word only the DC heard is added when its confidence is at least this
    edge_margin: float = 0.0  # a disagreement goes to the DC only when its word is this much more confident
    pad_margin_s: float = 0.3  # a padded decode keeps words whose middle lies this close to the utterance


@dataclass(frozen=True, slots=True)
class Revision:
    """A re-decoded utterance. ``model``/``version`` name the model whose hypothesis won;
    ``published`` is False when the edge's hypothesis stands (``reason`` says why)."""

    result: AsrResult
    model: str
    version: str
    candidates: dict[str, float]  # model -> confidence of its hypothesis
    published: bool = True
    reason: str = ""
    rejected: dict[str, str] = field(default_factory=dict)  # model -> why its hypothesis was rejected


def _key(word: str) -> str:
    return normalize(word)


def _repeats(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Phrases of ``n`` words that occur more than once."""
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        seen[g] = seen.get(g, 0) + 1
    return {g for g, c in seen.items() if c > 1}


def hallucination(result: AsrResult, duration_s: float, edge_text: str, rule: ReviseRule) -> str:
    """Why ``result`` (of ``duration_s`` of audio) looks hallucinated, or "" when it does not."""
    keys = [k for w in result.words for k in _key(w.word).split()] or normalize(result.text).split()
    if not keys:
        return ""
    if result.no_speech_prob > rule.max_no_speech:
        return "no_speech"
    if len(keys) > rule.max_words_per_s * max(duration_s, 0.5):
        return "too_many_words"
    loops = _repeats(keys, rule.min_repeat) - _repeats(normalize(edge_text).split(), rule.min_repeat)
    if loops:
        return "repetition"
    return ""


def _edge_words(edge: AsrResult) -> list[Word]:
    """The edge's words; a hypothesis without word timing gets its confidence on every word."""
    if edge.words:
        return list(edge.words)
    return [Word(w, 0.0, 0.0, edge.confidence) for w in edge.text.split()]


def combine(edge: Sequence[Word], dc: Sequence[Word], rule: ReviseRule = ReviseRule(),
            span_s: tuple[float, float] | None = None) -> list[Word]:
    """ROVER-style word combination of two hypotheses (see the module doc). Punctuation-only
    tokens are left out. A DC word whose middle lies outside ``span_s`` (the utterance proper,
    when the DC decoded neighbouring audio too) may confirm an edge word but neither replace
    one nor be added."""
    edge = [w for w in edge if _key(w.word)]
    dc = [w for w in dc if _key(w.word)]
    a = [_key(w.word) for w in edge]
    b = [_key(w.word) for w in dc]

    def inside(w: Word) -> bool:
        return span_s is None or span_s[0] <= (w.start_s + w.end_s) / 2 <= span_s[1]

    n, m = len(a), len(b)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1, cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    out: list[Word] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            e, d = edge[i - 1], dc[j - 1]
            if a[i - 1] == b[j - 1]:
                out.append(Word(e.word, d.start_s, d.end_s, max(e.confidence, d.confidence)))
            else:
                out.append(d if inside(d) and d.confidence > e.confidence + rule.edge_margin else e)
            i, j = i - 1, j - 1
        elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            out.append(edge[i - 1])  # a word only the edge heard stays: revisions must not lose words
            i -= 1
        else:
            if inside(dc[j - 1]) and dc[j - 1].confidence >= rule.keep_below:
                out.append(dc[j - 1])
            j -= 1
    out.reverse()
    return out


def _trim(result: AsrResult, duration_s: float, lead_s: float, tail_s: float, margin_s: float) -> AsrResult:
    """Only the words of a padded decode whose middle lies within the utterance (times shifted to it)."""
    if lead_s <= 0 and tail_s <= 0:
        return result
    lo, hi = lead_s - margin_s, duration_s - tail_s + margin_s
    words = tuple(Word(w.word, max(0.0, w.start_s - lead_s), max(0.0, w.end_s - lead_s), w.confidence)
                  for w in result.words if lo <= (w.start_s + w.end_s) / 2 <= hi)
    conf = segment_confidence([w.confidence for w in words], result.avg_logprob, result.no_speech_prob)
    return AsrResult(" ".join(w.word for w in words), words, conf, result.avg_logprob, result.no_speech_prob,
                     result.decode_s)


class SpeechReviser:
    """Re-decodes utterances with several models and conversation context. Thread-safe."""

    def __init__(self, models: Sequence[WhisperAsr], options: DecodeOptions = DC_OPTIONS,
                 vocabulary_prompt: str = "", rule: ReviseRule | None = None) -> None:
        if not models:
            raise ValueError("at least one model")
        self.models = list(models)
        self.options = options
        self.vocabulary_prompt = vocabulary_prompt
        self.rule = rule or ReviseRule()
        self._context: OrderedDict[str, deque[str]] = OrderedDict()
        self._lock = threading.Lock()

    def context(self, conversation: str) -> str:
        with self._lock:
            turns = list(self._context.get(conversation, ()))
        return " ".join(t for t in (self.vocabulary_prompt, *turns) if t)

    def remember(self, conversation: str, text: str) -> None:
        """Add a (revised) turn to the conversation's context."""
        if not text:
            return
        with self._lock:
            turns = self._context.setdefault(conversation, deque(maxlen=_CONTEXT_TURNS))
            self._context.move_to_end(conversation)
            turns.append(text)
            while len(self._context) > _MAX_CONVERSATIONS:
                self._context.popitem(last=False)

    def revise(self, conversation: str, clip: np.ndarray, edge: AsrResult | None = None, *,
               lead_s: float = 0.0, tail_s: float = 0.0) -> Revision:
        """Decode ``clip`` (the utterance, with ``lead_s``/``tail_s`` of neighbouring audio)
        with every model; publish the combination with the edge's words only when it is better."""
        rule = self.rule
        edge = edge if edge is not None else AsrResult("", (), 0.0)
        duration_s = len(clip) / SAMPLE_RATE
        speech_s = max(0.0, duration_s - lead_s - tail_s)
        prompt = self.context(conversation) or None
        best: tuple[AsrResult, WhisperAsr] | None = None
        candidates: dict[str, float] = {}
        rejected: dict[str, str] = {}
        for model in self.models:
            raw = model.transcribe([clip], self.options, prompts=[prompt])[0]
            result = _trim(raw, duration_s, lead_s, tail_s, rule.pad_margin_s)
            candidates[model.name] = round(result.confidence, 4)
            why = hallucination(result, speech_s, edge.text, rule)
            if why:
                rejected[model.name] = why
                continue
            if result.text and (best is None or result.confidence > best[0].confidence):
                best = (result, model)
        if best is None:
            revision = Revision(edge, "edge", "edge", candidates, published=False,
                                reason="no_hypothesis", rejected=rejected)
        else:
            dc, model = best
            span = (0.0, speech_s) if lead_s > 0 or tail_s > 0 else None
            words = tuple(combine(_edge_words(edge), dc.words, rule, span)) if edge.text else dc.words
            text = " ".join(w.word for w in words)
            conf = segment_confidence([w.confidence for w in words], dc.avg_logprob, dc.no_speech_prob)
            merged = AsrResult(text, words, conf, dc.avg_logprob, dc.no_speech_prob, dc.decode_s)
            if normalize(text) == normalize(edge.text):
                revision = Revision(edge, "edge", "edge", candidates, published=False, reason="same",
                                    rejected=rejected)
            elif edge.text and dc.confidence < edge.confidence + rule.min_gain:
                revision = Revision(edge, "edge", "edge", candidates, published=False, reason="not_better",
                                    rejected=rejected)
            else:
                revision = Revision(merged, model.name, model.version, candidates, rejected=rejected)
        self.remember(conversation, revision.result.text)
        return revision
