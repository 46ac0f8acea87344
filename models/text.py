"""One English text normalisation and one word error rate, for every WER the project reports.

:func:`normalize` puts references and hypotheses in the same form before they are compared:
lower case, punctuation dropped (apostrophes kept inside words), common contractions
expanded, British spellings mapped to American (a small table plus ``-our`` -> ``-or``
words), numbers written as words ("14:30" -> "fourteen thirty", "40%" -> "forty percent", "21st" ->
"twenty first"), hesitations dropped ("uh", "um", "hmm"), informal forms spelled out ("gonna" ->
"going to", "y'know" -> "you know", "alright" -> "all right"), hyphenated words split.
:func:`wer` is ``jiwer``'s word error rate over a corpus of (reference, hypothesis) pairs
after :func:`normalize` on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["normalize", "wer", "number_to_words"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

_BRITISH = {
    "harbour": "harbor", "harbours": "harbors", "colour": "color", "colours": "colors",
    "neighbour": "neighbor", "neighbours": "neighbors", "favourite": "favorite", "honour": "honor",
    "labour": "labor", "flavour": "flavor", "centre": "center", "centres": "centers",
    "theatre": "theater", "metre": "meter", "metres": "meters", "kilometre": "kilometer",
    "kilometres": "kilometers", "programme": "program", "travelled": "traveled",
    "travelling": "traveling", "cancelled": "canceled", "cancelling": "canceling", "grey": "gray",
    "organise": "organize", "organised": "organized", "realise": "realize", "realised": "realized",
    "recognise": "recognize", "apologise": "apologize", "defence": "defense", "licence": "license",
    "tyre": "tire", "tyres": "tires", "cheque": "check", "jewellery": "jewelry", "catalogue": "catalog",
    "analyse": "analyze", "aluminium": "aluminum", "okay": "ok",
}
_CONTRACTIONS = {
    "don't": "do not", "doesn't": "does not", "didn't": "did not", "can't": "cannot", "cannot": "can not",
    "won't": "will not", "isn't": "is not", "aren't": "are not", "wasn't": "was not", "weren't": "were not",
    "i'm": "i am", "i'll": "i will", "i've": "i have", "i'd": "i would", "we'll": "we will",
    "we're": "we are", "we've": "we have", "you'll": "you will", "you're": "you are", "they're": "they are",
    "they'll": "they will", "it's": "it is", "that's": "that is", "there's": "there is",
    "let's": "let us", "he's": "he is", "she's": "she is", "what's": "what is",
}
# Hesitations carry no words: a transcript that writes them and one that drops them score alike.
_HESITATIONS = frozenset({"uh", "um", "uhm", "umm", "hm", "hmm", "mm", "mhm", "er", "erm", "ah", "eh", "uh-huh"})
_INFORMAL = {"gonna": "going to", "wanna": "want to", "gotta": "got to", "yknow": "you know",
             "y'know": "you know", "alright": "all right", "kinda": "kind of", "sorta": "sort of",
             "mr": "mister", "mrs": "missus", "dr": "doctor", "lemme": "let me", "gimme": "give me",
             "cause": "because", "'cause": "because"}
_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
             "nine": "ninth", "twelve": "twelfth"}
_ORD = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_NUM = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def number_to_words(n: int) -> str:
    """0..999999 as English words (no "and")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return number_to_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_to_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def _number(match: re.Match[str]) -> str:
    token = match.group(0).replace(",", "")
    if "." in token:
        whole, frac = token.split(".", 1)
        return f" {number_to_words(int(whole))} point {' '.join(_ONES[int(d)] for d in frac)} "
    if len(token) > 1 and token.startswith("0"):  # "06" as in "zero six hundred"
        return " " + " ".join(_ONES[int(d)] for d in token) + " "
    return f" {number_to_words(int(token))} "


def _ordinal(match: re.Match[str]) -> str:
    words = number_to_words(int(match.group(1))).split()
    last = words[-1]
    words[-1] = _ORDINALS.get(last, last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " " + " ".join(words) + " "


def normalize(text: str) -> str:
    """The one normal form WER is scored on (see the module doc)."""
    s = text.lower().replace("’", "'").replace("%", " percent ")
    s = re.sub(r"(\d):(\d)", r"\1 \2", s)
    s = re.sub(r"(\d)-(?=\d)", r"\1 ", s)
    s = re.sub(r"\buh-huh\b", " ", s)
    s = _ORD.sub(_ordinal, s)
    s = _NUM.sub(_number, s)
    s = re.sub(r"[^a-z0-9' ]+", " ", s)
    words: list[str] = []
    for w in s.split():
        w = _INFORMAL.get(w, w).strip("'")
        if not w or w in _HESITATIONS:
            continue
        w = _INFORMAL.get(w, w)
        w = _CONTRACTIONS.get(w, w)
        for part in w.split():
            part = _CONTRACTIONS.get(part, part)
            words.extend(_BRITISH.get(p, p) for p in part.split())
    return " ".join(words)


def wer(refs: Iterable[str], hyps: Iterable[str]) -> float:
    """Corpus WER (total edits / total reference words) after :func:`normalize` on both sides.
    Pairs whose reference normalises to nothing are skipped; NaN when no reference words."""
    import jiwer

    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return float("nan")
    out = jiwer.process_words([r for r, _ in pairs], [h if h else "" for _, h in pairs])
    return float(out.wer)
