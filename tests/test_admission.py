"""Unit tests of the load estimator and the edge's admission decision (no timing assertions: fake clock)."""

from __future__ import annotations

import pytest

from placement.edge import Placement, Request, Serve, Shed, Spill, View, deadline_of, decide
from placement.load import LoadEstimator


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_service_time_is_an_ewma_per_item_per_model() -> None:
    est = LoadEstimator(alpha=0.5, window_s=10.0, clock=FakeClock())
    assert est.service_s("fer") is None and est.predict_s("fer", 3) is None
    est.record_batch("fer", 4, 100.0, 100.4)  # 0.1 s per item
    assert est.service_s("fer") == pytest.approx(0.1)
    est.record_batch("fer", 2, 101.0, 101.6)  # 0.3 s per item -> 0.1 + 0.5 * 0.2
    assert est.service_s("fer") == pytest.approx(0.2)
    assert est.service_s("other") is None
    assert est.predict_s("fer", 4) == pytest.approx(1.0)  # 4 ahead + itself


def test_utilisation_counts_busy_time_in_the_window_only() -> None:
    clock = FakeClock()
    est = LoadEstimator(window_s=10.0, clock=clock)
    est.record_batch("fer", 1, 92.0, 97.0)
    est.record_batch("fer", 1, 98.0, 100.0)
    clock.now = 100.0
    assert est.utilisation() == pytest.approx(0.7)
    clock.now = 105.0  # window 95..105: 2 s of the first batch + 2 s of the second
    assert est.utilisation() == pytest.approx(0.4)
    clock.now = 200.0
    assert est.utilisation() == 0.0


def test_snapshot_reports_queue_delay_capacity_and_models() -> None:
    clock = FakeClock()
    est = LoadEstimator(alpha=1.0, window_s=10.0, clock=clock)
    est.record_batch("fer", 10, 99.0, 100.0, waited_s=0.5)
    snap = est.snapshot("fer", queue_depth=20)
    assert snap.service_ms == {"fer": pytest.approx(100.0)}
    assert snap.queue_delay_ms == pytest.approx(2000.0)
    assert snap.capacity_per_s == pytest.approx(10.0)
    assert snap.queue_depth == 20 and snap.utilisation == pytest.approx(0.1)
    empty = LoadEstimator().snapshot("fer", 0)
    assert empty.capacity_per_s == 0.0 and empty.service_ms == {}


def test_deadline_of_prefers_the_frame_then_the_default() -> None:
    assert deadline_of(500, 100, 300) == 500
    assert deadline_of(None, 100, 300) == 400
    assert deadline_of(None, 100, 0) is None


@pytest.mark.parametrize(("now", "deadline", "edge", "dc", "want"), [
    (0, None, 9e9, None, Serve(9e9)),
    (0, 100, None, None, Serve(None, 100)),
    (0, 100, 50.0, None, Serve(50.0, 100)),
    (0, 100, 150.0, 80.0, Spill(150.0, 100)),
    (0, 100, 150.0, 120.0, Shed("deadline", 150.0, 100)),
    (0, 100, 150.0, None, Shed("deadline", 150.0, 100)),
    (200, 100, 1.0, 1.0, Shed("deadline_passed", 1.0, -100)),
])
def test_decide(now: float, deadline: int | None, edge: float | None, dc: float | None, want: Placement) -> None:
    assert decide(Request(deadline), View(edge, dc), now) == want


def test_margin_pushes_a_tight_request_off_the_edge() -> None:
    assert isinstance(decide(Request(100), View(96.0, None, margin_ms=5.0), 0), Shed)
    assert isinstance(decide(Request(100), View(94.0, None, margin_ms=5.0), 0), Serve)


def test_overflow_is_the_turned_away_fraction_of_the_window() -> None:
    clock = FakeClock()
    est = LoadEstimator(window_s=2.0, clock=clock)
    assert est.overflow() == 0.0
    for away in (True, False, False, True):
        est.record_admission(away)
    assert est.overflow() == pytest.approx(0.5)
    assert est.snapshot("fer", 0).overflow == pytest.approx(0.5)
    clock.now += 3.0
    assert est.overflow() == 0.0


def test_measured_wait_raises_the_published_queue_delay() -> None:
    est = LoadEstimator(alpha=1.0, clock=FakeClock())
    est.record_batch("fer", 1, 99.9, 100.0, waited_s=0.8)
    assert est.snapshot("fer", 1).queue_delay_ms == pytest.approx(800.0)  # work queued: the measured wait
    est.batch_started(1, 100.0)
    assert est.snapshot("fer", 0).queue_delay_ms == pytest.approx(800.0)  # a batch running
    est.record_batch("fer", 1, 100.0, 100.1, waited_s=0.8)
    assert est.snapshot("fer", 0).queue_delay_ms == 0.0  # idle: no stale wait keeps devices away


def test_prediction_counts_the_running_batch_and_whole_batches() -> None:
    clock = FakeClock()
    est = LoadEstimator(alpha=1.0, window_s=10.0, clock=clock)
    est.record_batch("fer", 4, 99.6, 100.0)  # 0.1 s per item
    est.batch_started(4, 100.0)  # 4 items running since now: 0.4 s left
    clock.now = 100.1  # 0.3 s left
    # 5 ahead, batches of 4: the running batch, then one full batch, then its own (1 ahead + itself)
    assert est.predict_s("fer", 5, max_batch=4) == pytest.approx(0.3 + 0.4 + 0.2)
    for _ in range(20):  # 20 admitted over the 10 s window: 2 per s join its batch until it starts
        clock.now -= 0.5
        est.record_admission(turned_away=False)
    clock.now = 100.1
    assert est.predict_s("fer", 5, max_batch=4) == pytest.approx(0.3 + 0.4 + 0.3)  # 0.7 s x 2/s = 1 joins
    est.record_batch("fer", 4, 100.0, 100.4)  # the running batch ended
    assert est.predict_s("fer", 0, max_batch=4) == pytest.approx(0.1)  # nothing running, nothing ahead


def test_batch_time_is_fixed_overhead_plus_cost_per_item() -> None:
    clock = FakeClock()
    est = LoadEstimator(alpha=0.5, window_s=10.0, clock=clock)
    est.record_batch("fer", 2, 99.0, 99.0 + 0.030 + 2 * 0.010)  # 30 ms overhead + 10 ms per item
    assert est.batch_model("fer") == pytest.approx((0.0, 0.025))  # one size seen: no line to fit yet
    for items in (8, 1, 16, 4, 2, 12):
        est.record_batch("fer", items, 99.0, 99.0 + 0.030 + items * 0.010)
    fixed, per_item = est.batch_model("fer") or (0.0, 0.0)
    assert fixed == pytest.approx(0.030) and per_item == pytest.approx(0.010)
    # nothing running, 3 ahead, batches of 16, no arrivals: one batch of 4 = 30 + 40 ms; the
    # EWMA of seconds / items (small batches: ~25 ms per item) would have said ~100 ms
    assert est.predict_s("fer", 3, max_batch=16) == pytest.approx(0.070)
    # 20 ahead: one full batch (30 + 160 ms) before its own batch of 5 (30 + 50 ms)
    assert est.predict_s("fer", 20, max_batch=16) == pytest.approx(0.190 + 0.080)


def test_batch_model_falls_back_when_the_fit_is_not_physical() -> None:
    est = LoadEstimator(alpha=1.0, clock=FakeClock())
    assert est.batch_model("fer") is None
    est.record_batch("fer", 4, 99.0, 99.4)
    assert est.batch_model("fer") == pytest.approx((0.0, 0.1))


def test_a_burst_fills_its_batch_before_the_long_window_shows_it() -> None:
    clock = FakeClock()
    est = LoadEstimator(alpha=1.0, window_s=10.0, clock=clock)
    est.record_batch("fer", 4, 99.6, 100.0)  # 0.1 s per item
    est.batch_started(4, 100.0)  # 0.4 s left
    for _ in range(10):  # 10 admitted in the last 0.25 s: 40 per s, though only 1 per s over 10 s
        est.record_admission(turned_away=False)
    # its batch starts in 0.4 s; 16 arrive meanwhile: its own batch is full (4 items)
    assert est.predict_s("fer", 0, max_batch=4) == pytest.approx(0.4 + 0.4)


def test_measured_bias_scales_the_prediction_up_never_down() -> None:
    est = LoadEstimator(alpha=1.0, window_s=10.0, clock=FakeClock())
    est.record_batch("fer", 1, 99.9, 100.0)  # 0.1 s per item
    assert est.predict_s("fer", 1) == pytest.approx(0.2)
    for _ in range(200):  # admitted requests took 1.5 x what the model said
        est.record_completion(0.2, 0.3)
    assert est.bias() == pytest.approx(1.5, rel=1e-3)
    assert est.predict_s("fer", 1) == pytest.approx(0.3, rel=1e-3)
    assert est.predict_s("fer", 1, corrected=False) == pytest.approx(0.2)
    for _ in range(200):  # faster than predicted: the model is kept, not trimmed
        est.record_completion(0.2, 0.1)
    assert est.bias() < 1.0 and est.predict_s("fer", 1) == pytest.approx(0.2)
