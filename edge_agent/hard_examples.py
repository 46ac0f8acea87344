"""Turns edge results into hard examples in the outbox: mining decides, this packs.

Called from the pipeline's worker thread (it only encodes and writes SQLite), once per
result: face crops go out as grayscale PNGs, speech segments as 16-bit PCM.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from common import tracing
from edge_agent.mining import MiningPolicy
from edge_agent.outbox import Outbox
from topics.dc import MAX_HARD_EXAMPLE_BYTES, HardExample, encode_hard_example
from topics.names import KAFKA_HARD_EXAMPLES
from topics.vision import VisionResult

__all__ = ["HardExampleReporter", "encode_crop", "speech_pcm", "MAX_SPEECH_PCM_BYTES"]

# the audio of one hard example, leaving room for the rest of the record under the Kafka limit
MAX_SPEECH_PCM_BYTES = MAX_HARD_EXAMPLE_BYTES - (64 << 10)


def _s16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def speech_pcm(samples: np.ndarray, lead: np.ndarray, tail: np.ndarray, sample_rate: int,
               max_bytes: int = MAX_SPEECH_PCM_BYTES) -> tuple[bytes, float, float]:
    """s16le PCM of an utterance with its ``lead``/``tail`` audio, and their seconds.

    The lead and tail are shortened (each to at most half of what is left) so the PCM stays
    within ``max_bytes``; the utterance itself is never cut."""
    room = max(0, max_bytes // 2 - len(samples))  # samples left for the context
    n_lead = min(len(lead), max(room // 2, room - len(tail)))
    n_tail = min(len(tail), room - n_lead)
    lead, tail = lead[len(lead) - n_lead:], tail[:n_tail]
    return _s16(np.concatenate([lead, samples, tail])), n_lead / sample_rate, n_tail / sample_rate


def encode_crop(crop: np.ndarray, max_side: int) -> bytes:
    """A uint8 gray crop as PNG, shrunk so its longer side is at most ``max_side``."""
    h, w = crop.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        crop = cv2.resize(crop, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", crop)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


class HardExampleReporter:
    """Mines results with ``policy`` and stores the hard ones in ``outbox``."""

    def __init__(self, policy: MiningPolicy, outbox: Outbox, node: str) -> None:
        self.policy = policy
        self.outbox = outbox
        self.node = node
        self.errors = 0

    def _put(self, ex: HardExample, traceparent: str | None = None) -> bool:
        return self.outbox.put(ex.key, KAFKA_HARD_EXAMPLES, encode_hard_example(ex), ex.device.encode(),
                               traceparent)

    def offer_faces(self, result: VisionResult, crops: Sequence[np.ndarray], probs: np.ndarray) -> int:
        """Mine every face of one vision result; return how many went to the outbox."""
        sent = 0
        for item, (face, crop, p) in enumerate(zip(result.faces, crops, probs)):
            values = [float(x) for x in p]
            reasons = self.policy.judge(result.model.name, result.device, probs=values)
            if not reasons:
                continue
            try:
                data = encode_crop(crop, self.policy.settings.max_crop_side)
            except (ValueError, cv2.error):
                self.errors += 1  # an odd crop costs one hard example, never the result
                continue
            sent += self._put(HardExample(
                device=result.device, model=result.model.name, model_version=result.model.version,
                kind="face", seq=result.seq, item=item, encoding="png", data=data,
                result=face.label, confidences=tuple(min(1.0, max(0.0, v)) for v in values),
                reasons=reasons, node=self.node, captured_at_ms=result.captured_at_ms,
            ), tracing.child(tracing.current()))
        return sent

    def offer_speech(
        self, *, device: str, stream: str, seq: int, model: str, model_version: str,
        pcm: bytes, sample_rate: int, text: str, word_confidences: Sequence[float],
        captured_at_ms: int, traceparent: str | None = None, lead_s: float = 0.0, tail_s: float = 0.0,
    ) -> bool:
        """Mine one recognised speech segment (mono s16le PCM); True if it went to the outbox.

        ``pcm`` may hold ``lead_s``/``tail_s`` of the leg's audio around the utterance.
        ``traceparent``: the trace of the segment's MQTT output, carried on to the DC as a header."""
        values = [min(1.0, max(0.0, float(c))) for c in word_confidences]
        reasons = self.policy.judge(model, device, scores=values)
        if not reasons:
            return False
        return self._put(HardExample(
            device=device, model=model, model_version=model_version, kind="audio", seq=seq,
            item=0, encoding="pcm_s16le", data=pcm, result=text, confidences=tuple(values),
            reasons=reasons, node=self.node, captured_at_ms=captured_at_ms, stream=stream,
            sample_rate=sample_rate, lead_s=lead_s, tail_s=tail_s,
        ), traceparent)
