"""Domain-vocabulary speech for the DC loop: formulaic radio traffic the edge's base vocabulary lacks.

The edge starts with the vocabulary prompt of :data:`BASE_SENTENCES` (generic radio phrases).
Field traffic follows templates with call signs and places and brings words that prompt has never
seen (convoy, medevac, sitrep, exfil, waypoint, ...), some not even in CMUdict. Train and
held-out utterances are different combinations of the same templates.
"""

from __future__ import annotations

import random

import numpy as np

from sim.speech_corpus import VOICES, synthesize

__all__ = ["BASE_SENTENCES", "domain_sentences", "speak"]

BASE_SENTENCES: tuple[str, ...] = (
    "radio check how do you read me",
    "i read you loud and clear",
    "roger that over",
    "say again over",
    "all stations this is control out",
    "copy that proceed",
    "hold position and wait",
    "we are on our way",
    "request permission to move",
    "permission granted",
    "the road is clear",
    "stand by",
)

_CALLS = ("bravo", "charlie", "delta", "echo")
_PLACES = ("alpha", "kilo", "tango", "zulu")
_TEMPLATES = (
    "convoy {c} report at checkpoint {p}",
    "medevac requested at waypoint {p}",
    "send a sitrep from waypoint {p}",
    "exfil team {c} hold at checkpoint {p}",
    "{c} request resupply at waypoint {p}",
)



def domain_sentences() -> list[str]:
    """Every distinct template combination, in a fixed shuffled order."""
    out = sorted({t.format(c=c, p=p) for t in _TEMPLATES for c in _CALLS for p in _PLACES})
    random.Random(0).shuffle(out)
    return out


def speak(sentence: str, index: int) -> np.ndarray:
    """16 kHz float32 speech, voices alternating by ``index``."""
    return synthesize(sentence, VOICES[index % len(VOICES)])
