"""The VAD's start padding (``VadConfig.start_pad_s``): a start reaches back by the pre-roll,
never into the previous speech. The network is scripted, so the decisions are exact."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

from models.vad import SAMPLE_RATE, WINDOW, SileroVad, VadConfig, VadStream


class _Scripted:
    """Stands in for :class:`SileroVad`: one scripted speech probability per window."""

    def __init__(self, probs: list[float]) -> None:
        self._probs = list(probs)

    def probs(self, windows: np.ndarray, state: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        out = np.array([self._probs.pop(0) for _ in range(len(windows))], dtype=np.float32)
        return out, state


def _events(probs: list[float], config: VadConfig) -> list[tuple[str, int]]:
    stream = VadStream(cast(SileroVad, _Scripted(probs)), config)
    events = stream.push(np.zeros(len(probs) * WINDOW, dtype=np.float32)) + stream.end()
    return [(e.kind, e.sample) for e in events]


def _windows(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE / WINDOW)


def test_a_start_reaches_back_by_the_start_padding_and_the_end_keeps_speech_pad() -> None:
    probs = [0.0] * 40 + [0.9] * 20 + [0.0] * 30  # speech from window 40
    plain = _events(probs, VadConfig(speech_pad_s=0.15, min_silence_s=0.4))
    pre = _events(probs, VadConfig(speech_pad_s=0.15, start_pad_s=0.4, min_silence_s=0.4))
    start = 40 * WINDOW
    assert plain[0] == ("start", start - int(0.15 * SAMPLE_RATE))
    assert pre[0] == ("start", start - int(0.4 * SAMPLE_RATE))
    assert pre[1] == plain[1] == ("end", 60 * WINDOW + int(0.15 * SAMPLE_RATE))


def test_the_start_padding_never_reaches_into_the_previous_speech() -> None:
    gap = _windows(0.5)  # a 0.5 s pause: longer than min_silence_s, shorter than the pre-roll + end pad
    probs = [0.0] * 20 + [0.9] * 20 + [0.0] * gap + [0.9] * 20 + [0.0] * 30
    ev = _events(probs, VadConfig(speech_pad_s=0.15, start_pad_s=0.6, min_silence_s=0.4))
    assert [k for k, _ in ev] == ["start", "end", "start", "end"]
    first_end, second_start = ev[1][1], ev[2][1]
    assert second_start == first_end  # not 0.6 s before the second speech
    assert second_start > 40 * WINDOW
    assert VadConfig(speech_pad_s=0.2).pre_pad_s == 0.2 and VadConfig(start_pad_s=0.0).pre_pad_s == 0.0
