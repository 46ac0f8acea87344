"""Hard-example mining: Sedna's filters plus a top-2 margin, and a rate cap.

Filters are pure functions of one result: class probabilities of a classifier
(``probs``; its score is the top probability) or per-item scores without a
distribution (word confidences, box scores), where ``cross_entropy`` and
``margin`` have nothing to judge and never fire. A :class:`Miner` combines one model's
filters (hard if any says so) with token buckets per device and per node, so a
bad camera cannot flood the DC; what the cap refuses is counted.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.dc_settings import FilterSpec, HardExampleSettings, ModelMiningSettings

__all__ = [
    "threshold_score",
    "cross_entropy_score",
    "margin_score",
    "Outcome",
    "HardFilter",
    "make_filter",
    "TokenBucket",
    "MiningStats",
    "Miner",
    "MiningPolicy",
]


def threshold_score(scores: Sequence[float]) -> float:
    """Sedna ``Threshold``: the mean score (1.0 for no scores: nothing to doubt)."""
    return sum(scores) / len(scores) if scores else 1.0


def cross_entropy_score(probs: Sequence[float]) -> float:
    """Sedna ``CrossEntropy``: ``1 + sum p ln p / ln N``; 1 = certain, 0 = uniform."""
    n = len(probs)
    if n < 2:
        return 1.0
    total = sum(probs)
    if total <= 0 or any(p < 0 for p in probs):
        return 0.0
    acc = sum((p / total) * math.log(p / total) for p in probs if p > 0)
    return 1.0 + acc / math.log(n)


def margin_score(probs: Sequence[float]) -> float:
    """Gap between the two most likely classes (1.0 for fewer than two classes)."""
    if len(probs) < 2:
        return 1.0
    first, second = sorted(probs, reverse=True)[:2]
    return first - second


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a filter looks at: class ``probs`` or plain ``scores`` (one of them)."""

    probs: Sequence[float] | None = None
    scores: Sequence[float] | None = None

    def score_list(self) -> Sequence[float]:
        if self.scores is not None:
            return self.scores
        return [max(self.probs)] if self.probs else []


@dataclass(frozen=True, slots=True)
class HardFilter:
    """One configured filter: ``test(outcome)`` is True for a hard case."""

    name: str
    test: Callable[[Outcome], bool]


def make_filter(spec: FilterSpec, rng: random.Random) -> HardFilter:
    """Build a filter from its settings."""
    t = spec.threshold
    if spec.kind == "threshold":
        return HardFilter("threshold", lambda o: threshold_score(o.score_list()) < t)
    if spec.kind == "cross_entropy":
        return HardFilter("cross_entropy", lambda o: o.probs is not None and cross_entropy_score(o.probs) < t)
    if spec.kind == "margin":
        return HardFilter("margin", lambda o: o.probs is not None and margin_score(o.probs) < t)
    return HardFilter("random", lambda o: rng.random() < t)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self) -> bool:
        self._refill()
        return self._tokens >= 1.0

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class MiningStats:
    seen: int = 0
    hard: int = 0
    emitted: int = 0
    rate_limited: int = 0
    by_filter: dict[str, int] = field(default_factory=dict)


class Miner:
    """Decides which results of one model are hard and may leave the edge now."""

    def __init__(
        self,
        settings: ModelMiningSettings,
        node_bucket: TokenBucket,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = 10_000,
    ) -> None:
        self.settings = settings
        self.filters = [make_filter(spec, rng) for spec in settings.filters]
        self._node_bucket = node_bucket
        self._clock = clock
        self._devices: dict[str, TokenBucket] = {}
        self._max_devices = max_devices
        self.stats = MiningStats()

    def reasons(self, outcome: Outcome) -> tuple[str, ...]:
        """Names of the filters that call this result hard (pure apart from ``random``)."""
        return tuple(f.name for f in self.filters if f.test(outcome))

    def _bucket(self, device: str) -> TokenBucket:
        bucket = self._devices.get(device)
        if bucket is None:
            if len(self._devices) >= self._max_devices:
                self._devices.pop(next(iter(self._devices)))
            bucket = TokenBucket(self.settings.rate_per_device_s, self.settings.burst_per_device,
                                 self._clock)
            self._devices[device] = bucket
        return bucket

    def judge(self, device: str, outcome: Outcome) -> tuple[str, ...]:
        """Reasons if the result is hard and within the rate caps, else ``()``."""
        self.stats.seen += 1
        reasons = self.reasons(outcome)
        if not reasons:
            return ()
        self.stats.hard += 1
        for r in reasons:
            self.stats.by_filter[r] = self.stats.by_filter.get(r, 0) + 1
        bucket = self._bucket(device)
        # Check both before taking either, so a refusal costs no token.
        if not (bucket.available() and self._node_bucket.available()):
            self.stats.rate_limited += 1
            return ()
        bucket.take()
        self._node_bucket.take()
        self.stats.emitted += 1
        return reasons


class MiningPolicy:
    """One :class:`Miner` per configured model, sharing the node-wide rate cap."""

    def __init__(self, settings: HardExampleSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        rng = random.Random(settings.seed)
        node_bucket = TokenBucket(settings.rate_total_s, settings.burst_total, clock)
        self.miners = {name: Miner(ms, node_bucket, rng, clock) for name, ms in settings.models.items()}

    def judge(self, model: str, device: str, *, probs: Sequence[float] | None = None,
              scores: Sequence[float] | None = None) -> tuple[str, ...]:
        """Reasons if this result of ``model`` is to be sent, else ``()`` (also when disabled).

        Give ``probs`` for a classifier, ``scores`` (e.g. word confidences) otherwise.
        """
        if (probs is None) == (scores is None):
            raise ValueError("give exactly one of probs and scores")
        miner = self.miners.get(model)
        if miner is None or not self.settings.enabled:
            return ()
        return miner.judge(device, Outcome(probs=probs, scores=scores))
