"""The edge's measured load: service time per item per model, queue delay, utilisation, capacity.

Batch time is modelled as a fixed overhead + a cost per item (``fixed + per_item x items``),
fitted per model by an exponentially weighted least-squares line through the measured
(items, seconds) of recent batches; while the batch sizes seen do not spread enough to fit a
line, the overhead is 0 and the cost per item is the EWMA of seconds / items.

Fed by the batch worker (one call per batch) and read by the placement decision and the status
publisher. Thread-safe: batches are recorded from the worker thread, snapshots taken on the loop.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from topics.status import EdgeLoad

__all__ = ["LoadEstimator"]

_BURST_S = 0.25  # the short window of the arrival rate
_BIAS_ALPHA = 0.05  # EWMA weight of one completed request in the prediction's bias


class LoadEstimator:
    """EWMA of service time per item (per model) and of queue wait; busy fraction over a window."""

    def __init__(self, alpha: float = 0.2, window_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < alpha <= 1 or window_s <= 0:
            raise ValueError("alpha must be in (0, 1] and window_s > 0")
        self.alpha = alpha
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._service_s: dict[str, float] = {}
        self._moments: dict[str, tuple[float, float, float, float]] = {}  # EWMA of n, t, n*n, n*t
        self._wait_s: float = 0.0
        self._busy: deque[tuple[float, float]] = deque()  # (start, end) of recent batches
        self._admitted: deque[tuple[float, bool]] = deque()  # (when, turned away) of recent requests
        self._running: tuple[int, float] | None = None  # (items, started) of the batch running now
        self._bias = 1.0  # EWMA of actual / predicted completion of the admitted requests

    def record_batch(self, model: str, items: int, started_s: float, ended_s: float,
                     waited_s: float | None = None) -> None:
        """One batch of ``items`` ran on ``model`` from ``started_s`` to ``ended_s`` (monotonic s).

        ``waited_s``: mean time its items waited in the queue before the batch started.
        """
        if items <= 0 or ended_s < started_s:
            return
        per_item = (ended_s - started_s) / items
        with self._lock:
            self._running = None
            old = self._service_s.get(model)
            self._service_s[model] = per_item if old is None else old + self.alpha * (per_item - old)
            t = ended_s - started_s
            sample = (float(items), t, float(items * items), items * t)
            m = self._moments.get(model)
            if m is not None:
                a = self.alpha
                sample = (m[0] + a * (sample[0] - m[0]), m[1] + a * (sample[1] - m[1]),
                          m[2] + a * (sample[2] - m[2]), m[3] + a * (sample[3] - m[3]))
            self._moments[model] = sample
            if waited_s is not None:
                self._wait_s += self.alpha * (max(waited_s, 0.0) - self._wait_s)
            self._busy.append((started_s, ended_s))
            self._prune(ended_s)

    def batch_started(self, items: int, started_s: float) -> None:
        """A batch of ``items`` started at ``started_s`` (monotonic s); :meth:`record_batch` ends it."""
        with self._lock:
            self._running = (items, started_s) if items > 0 else None

    def record_completion(self, predicted_s: float, actual_s: float) -> None:
        """An admitted request predicted to complete in ``predicted_s`` (by the uncorrected model)
        completed in ``actual_s``: folded into the bias that :meth:`predict_s` multiplies by."""
        if predicted_s <= 0 or actual_s < 0:
            return
        with self._lock:
            self._bias += _BIAS_ALPHA * (actual_s / predicted_s - self._bias)

    def bias(self) -> float:
        """Measured actual / predicted completion (>= 1 is applied; below 1 the model is kept)."""
        with self._lock:
            return self._bias

    def corrected(self, predicted_s: float) -> float:
        """``predicted_s`` of the uncorrected model times the measured bias when it is above 1."""
        return predicted_s * max(self.bias(), 1.0)

    def record_admission(self, turned_away: bool) -> None:
        """One admission decision: ``turned_away`` if the edge shed or spilled the request."""
        now = self._clock()
        with self._lock:
            self._admitted.append((now, turned_away))
            self._prune(now)

    def overflow(self) -> float:
        """Fraction of the requests of the last ``window_s`` that were turned away (0 with none)."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            n = len(self._admitted)
            return sum(1 for _, away in self._admitted if away) / n if n else 0.0

    def service_s(self, model: str) -> float | None:
        """Estimated service seconds per item of ``model``; None before its first batch."""
        with self._lock:
            return self._service_s.get(model)

    def batch_model(self, model: str) -> tuple[float, float] | None:
        """(fixed seconds, seconds per item) of a batch of ``model``; None before its first batch."""
        with self._lock:
            m = self._moments.get(model)
            mean_per_item = self._service_s.get(model)
        if m is None or mean_per_item is None:
            return None
        n, t, nn, nt = m
        spread = nn - n * n  # variance of the batch sizes
        if spread >= 0.5:
            per_item = (nt - n * t) / spread
            fixed = t - per_item * n
            if per_item > 0 and fixed >= 0:
                return fixed, per_item
        return 0.0, mean_per_item

    def predict_s(self, model: str, queue_depth: int, max_batch: int = 1, corrected: bool = True) -> float | None:
        """Predicted seconds from now until a request arriving now is served. None before any
        measurement.

        It waits for what is left of the batch running now, then for the ``queue_depth`` items
        ahead of it, in batches of up to ``max_batch``; its own batch also takes the requests that
        arrive until that batch starts, at the rate the edge admitted: the higher of the rates over
        the last ``window_s`` and over the last ``_BURST_S`` (a burst fills its batch before the
        long window shows it).
        Each batch takes ``fixed + per_item x items`` (:meth:`batch_model`). With ``max_batch`` 1,
        no fixed overhead and nothing running: ``(queue_depth + 1)`` x service per item.
        ``corrected``: times the measured bias when it is above 1 (what the model leaves out: the
        hand-over between batches, items dearer than the average, other work on the same cores)."""
        fit = self.batch_model(model)
        if fit is None:
            return None
        fixed, per_item = fit
        now = self._clock()
        with self._lock:
            self._prune(now)
            running = self._running
            admitted = sum(1 for _, away in self._admitted if not away)
            short = min(_BURST_S, self.window_s)
            recent = sum(1 for at, away in self._admitted if not away and at >= now - short)
        rate = max(admitted / self.window_s, recent / short)
        left = 0.0 if running is None else max(fixed + running[0] * per_item - (now - running[1]), 0.0)
        batch = max(max_batch, 1)
        before, mine = divmod(queue_depth, batch)  # full batches ahead; items ahead in its own batch
        starts_in = left + before * (fixed + batch * per_item)
        joining = rate * starts_in  # arrivals until its batch starts
        own = min(batch, mine + 1 + int(joining))
        predicted = starts_in + fixed + own * per_item
        return self.corrected(predicted) if corrected else predicted

    def utilisation(self) -> float:
        """Busy fraction of the batch worker over the last ``window_s``."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            start = now - self.window_s
            busy = sum(min(e, now) - max(s, start) for s, e in self._busy if e > start)
        return min(max(busy / self.window_s, 0.0), 1.0)

    def snapshot(self, model: str, queue_depth: int) -> EdgeLoad:
        """The load figures published in the edge status."""
        with self._lock:
            service = dict(self._service_s)
            waited = self._wait_s
            busy = queue_depth > 0 or self._running is not None
        per_item = service.get(model)
        # the measured wait (an EWMA over batches) only while work is queued or running: an idle
        # edge runs no batches, so that figure would stay at its last busy value and keep devices away
        queued = max(queue_depth * per_item if per_item is not None else 0.0, waited if busy else 0.0)
        return EdgeLoad(
            queue_delay_ms=1000.0 * max(queued, 0.0),
            service_ms={k: 1000.0 * v for k, v in service.items()},
            utilisation=self.utilisation(),
            capacity_per_s=0.0 if not per_item else 1.0 / per_item,
            queue_depth=queue_depth,
            overflow=self.overflow(),
        )

    def _prune(self, now: float) -> None:
        while self._busy and self._busy[0][1] < now - self.window_s:
            self._busy.popleft()
        while self._admitted and self._admitted[0][0] < now - self.window_s:
            self._admitted.popleft()
