"""Batching of Whisper requests from many call legs into one CTranslate2 call.

Leg workers call :meth:`WhisperBatcher.transcribe` (blocking, from their own thread); one
inference thread takes every request waiting at that moment (up to ``max_batch``, same
decode options and prompt) and runs them as one batch. While the model is busy, new requests queue up
and form the next batch, so batches grow with load and a lone request waits for nothing.
The queue is bounded by the callers: each caller waits for its own answer. ``urgent`` requests
(finals) are taken before the others (partials) when a model serves both.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from models.whisper_asr import AsrResult, DecodeOptions, WhisperAsr

__all__ = ["WhisperBatcher", "BatchStats"]


@dataclass
class BatchStats:
    """Batches run and utterances decoded (``mean_batch`` = utterances / batches)."""

    batches: int = 0
    utterances: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0
    errors: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))

    @property
    def mean_batch(self) -> float:
        return self.utterances / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Request:
    clip: np.ndarray
    options: DecodeOptions
    prompt: str | None
    future: Future[AsrResult]
    urgent: bool = False


class WhisperBatcher:
    """Inference threads (one per call the model may run at once, ``asr.parallel``) in front of
    one shared :class:`WhisperAsr`."""

    def __init__(self, asr: WhisperAsr, max_batch: int = 8) -> None:
        self.asr = asr
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._queue: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._in_flight = 0  # submitted and not answered yet
        self._urgent_in_flight = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"whisper-{asr.name}-{k}", daemon=True)
                         for k in range(asr.parallel)]
        for thread in self._threads:
            thread.start()

    @property
    def name(self) -> str:
        return self.asr.name

    @property
    def version(self) -> str:
        return self.asr.version

    @property
    def pending(self) -> int:
        """Utterances submitted and not answered yet (queued or decoding)."""
        return self._in_flight

    @property
    def urgent_pending(self) -> int:
        """Urgent utterances (finals) submitted and not answered yet."""
        return self._urgent_in_flight

    def submit(self, clip: np.ndarray, options: DecodeOptions, prompt: str | None = None, *,
               urgent: bool = False) -> Future[AsrResult]:
        """Queue one utterance; the future resolves with its result (or the model's exception).
        ``urgent`` ones go before every request that is not."""
        fut: Future[AsrResult] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("WhisperBatcher is closed")
            self._queue.append(_Request(np.asarray(clip, dtype=np.float32), options, prompt, fut, urgent))
            self._in_flight += 1
            self._urgent_in_flight += urgent
            self._cv.notify()
        return fut

    def transcribe(self, clip: np.ndarray, options: DecodeOptions, prompt: str | None = None,
                   timeout_s: float = 120.0, *, urgent: bool = False) -> AsrResult:
        """:meth:`submit` and wait (bounded) for the answer."""
        return self.submit(clip, options, prompt, urgent=urgent).result(timeout=timeout_s)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _take(self) -> list[_Request] | None:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            at = next((i for i, r in enumerate(self._queue) if r.urgent), 0)
            first = self._queue[at]
            del self._queue[at]
            batch = [first]
            rest: deque[_Request] = deque()
            while self._queue and len(batch) < self.max_batch:
                r = self._queue.popleft()
                same = (r.options == first.options and r.prompt == first.prompt  # one model call
                        and r.urgent == first.urgent)
                (batch if same else rest).append(r)
            self._queue.extendleft(reversed(rest))
            return batch

    def _run(self) -> None:
        import time

        while (batch := self._take()) is not None:
            t0 = time.perf_counter()
            try:
                results = self.asr.transcribe([r.clip for r in batch], batch[0].options,
                                              prompts=[r.prompt for r in batch])
            except Exception as exc:
                self._answered(batch, time.perf_counter() - t0, failed=True)
                for r in batch:
                    r.future.set_exception(exc)
                continue
            self._answered(batch, time.perf_counter() - t0)
            for r, res in zip(batch, results, strict=True):
                r.future.set_result(res)

    def _answered(self, batch: list[_Request], busy_s: float, failed: bool = False) -> None:
        with self._cv:  # inference threads answer concurrently
            self._in_flight -= len(batch)
            self._urgent_in_flight -= sum(r.urgent for r in batch)
            s = self.stats
            if failed:
                s.errors += 1
                return
            s.batches += 1
            s.utterances += len(batch)
            s.sizes.append(len(batch))
            s.audio_s += sum(len(r.clip) for r in batch) / 16000
            s.busy_s += busy_s
