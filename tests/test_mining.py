"""Hard-example filters (Sedna's formulas + top-2 margin) and the rate caps."""

from __future__ import annotations

import math

import pytest

from common.dc_settings import FilterSpec, HardExampleSettings, ModelMiningSettings
from edge_agent.mining import (
    MiningPolicy,
    TokenBucket,
    cross_entropy_score,
    margin_score,
    threshold_score,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_cross_entropy_matches_sedna_formula() -> None:
    probs = [0.5, 0.3, 0.2]
    expected = 1 + sum(p * math.log(p) for p in probs) / math.log(3)
    assert cross_entropy_score(probs) == pytest.approx(expected)
    assert cross_entropy_score([1 / 7] * 7) == pytest.approx(0.0, abs=1e-12)
    assert cross_entropy_score([1.0, 0, 0, 0]) == pytest.approx(1.0)  # 0 ln 0 = 0, no crash


def test_threshold_and_margin() -> None:
    assert threshold_score([0.9, 0.5]) == pytest.approx(0.7)  # Sedna: mean of the scores
    assert threshold_score([]) == 1.0
    assert margin_score([0.1, 0.45, 0.4, 0.05]) == pytest.approx(0.05)


def _policy(filters: list[FilterSpec], **kw: object) -> tuple[MiningPolicy, FakeClock]:
    clock = FakeClock()
    ms = ModelMiningSettings(filters=filters, **kw)  # type: ignore[arg-type]
    settings = HardExampleSettings(models={"m": ms}, seed=1, rate_total_s=1e6, burst_total=100_000)
    return MiningPolicy(settings, clock=clock), clock


def test_policy_names_the_filters_that_fired() -> None:
    policy, _ = _policy([FilterSpec(kind="threshold", threshold=0.6),
                         FilterSpec(kind="margin", threshold=0.2),
                         FilterSpec(kind="cross_entropy", threshold=0.3)])
    assert policy.judge("m", "cam", probs=[0.95, 0.03, 0.02]) == ()
    assert policy.judge("m", "cam", probs=[0.55, 0.45, 0.0]) == ("threshold", "margin")
    assert policy.judge("m", "cam", probs=[0.34, 0.33, 0.33]) == ("threshold", "margin", "cross_entropy")
    assert policy.judge("other-model", "cam", probs=[0.34, 0.33, 0.33]) == ()
    stats = policy.miners["m"].stats
    assert (stats.seen, stats.hard, stats.emitted) == (3, 2, 2)
    assert stats.by_filter == {"threshold": 2, "margin": 2, "cross_entropy": 1}


def test_random_filter_samples_at_its_rate() -> None:
    policy, _ = _policy([FilterSpec(kind="random", threshold=0.1)], rate_per_device_s=1e6,
                        burst_per_device=100_000)
    hits = sum(bool(policy.judge("m", "cam", probs=[0.99, 0.01])) for _ in range(20_000))
    assert 1700 < hits < 2300


def test_rate_cap_per_device_keeps_other_devices_flowing() -> None:
    policy, clock = _policy([FilterSpec(kind="threshold", threshold=1.0)],
                            rate_per_device_s=2.0, burst_per_device=5)
    bad = sum(bool(policy.judge("m", "bad-cam", probs=[0.5, 0.5])) for _ in range(100))
    assert bad == 5  # the burst, then nothing
    assert policy.miners["m"].stats.rate_limited == 95
    assert policy.judge("m", "good-cam", probs=[0.5, 0.5])  # another device is not starved
    clock.t += 1.0  # two tokens later
    assert sum(bool(policy.judge("m", "bad-cam", probs=[0.5, 0.5])) for _ in range(10)) == 2


def test_node_cap_bounds_all_devices_together() -> None:
    clock = FakeClock()
    ms = ModelMiningSettings(filters=[FilterSpec(kind="threshold", threshold=1.0)],
                             rate_per_device_s=100, burst_per_device=100)
    policy = MiningPolicy(HardExampleSettings(models={"m": ms}, rate_total_s=1, burst_total=10),
                          clock=clock)
    sent = sum(bool(policy.judge("m", f"cam{i}", probs=[0.5, 0.5])) for i in range(50))
    assert sent == 10


def test_scores_without_distribution_use_threshold_only() -> None:
    policy, _ = _policy([FilterSpec(kind="threshold", threshold=0.6),
                         FilterSpec(kind="margin", threshold=0.5),
                         FilterSpec(kind="cross_entropy", threshold=0.9)])
    assert policy.judge("m", "mic", scores=[0.9, 0.8, 0.7]) == ()
    assert policy.judge("m", "mic", scores=[0.9, 0.2, 0.3]) == ("threshold",)
    with pytest.raises(ValueError):
        policy.judge("m", "mic")


def test_disabled_policy_sends_nothing() -> None:
    settings = HardExampleSettings(enabled=False)
    policy = MiningPolicy(settings)
    assert policy.judge("fer-mini-xception", "cam", probs=[1 / 7] * 7) == ()


def test_token_bucket_refills_to_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.t += 100
    assert sum(bucket.take() for _ in range(10)) == 3
