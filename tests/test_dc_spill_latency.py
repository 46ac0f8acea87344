"""The DC path's predicted latency: the model (pure, explicit time) and the spill path reading it."""

from __future__ import annotations

import pytest

from common.offload_settings import OffloadSettings
from common.settings import KafkaSettings
from edge_agent.dc_spill import DcSpill
from placement.dc import RELAX_S, DcLatency


def test_dc_latency_counts_requests_out_and_relaxes_when_idle() -> None:
    model = DcLatency(100.0, now=10.0)
    assert model.predict_ms(10.0) == pytest.approx(100.0)
    model.latency_ms = 900.0  # measured slow, then nothing sent
    assert model.predict_ms(10.0) == pytest.approx(900.0)
    assert model.predict_ms(10.0 + 2 * RELAX_S) == pytest.approx(300.0)  # two half-lives idle: 100 + 800 / 4
    model.latency_ms, model.per_item_ms = 200.0, 10.0
    model.idle_since = None
    model.started = {"a": 8.0, "b": 10.0}  # one out for 2 s: the DC may have stopped answering
    assert model.predict_ms(10.0) == pytest.approx(2000.0 + 2 * 10.0)


def test_round_trips_and_timeouts_move_the_estimate() -> None:
    model = DcLatency(100.0, now=0.0, alpha=0.5)
    model.sent("a", 0.0)
    assert model.predict_ms(0.5) == pytest.approx(500.0)  # the one out is already 500 ms old
    model.finished("a", 0.3, round_trip_ms=300.0, per_item_ms=20.0)
    assert model.latency_ms == pytest.approx(200.0) and model.per_item_ms == pytest.approx(10.0)
    assert model.idle_since == 0.3 and not model.started
    model.sent("b", 1.0)  # the idle relaxation is folded in when a request goes out
    assert model.latency_ms == pytest.approx(100.0 + 100.0 * 0.5 ** (0.7 / RELAX_S))
    before = model.latency_ms
    model.finished("b", 6.0, round_trip_ms=5000.0)  # a timeout counts as its timeout
    assert model.latency_ms == pytest.approx(before + 0.5 * (5000.0 - before))
    model.sent("c", 7.0)
    model.finished("c", 7.1)  # given up (a send error): nothing measured
    assert model.latency_ms == pytest.approx(100.0 + (before + 0.5 * (5000.0 - before) - 100.0) * 0.5 ** (1 / RELAX_S))


async def test_the_spill_path_predicts_with_its_model() -> None:
    """No broker: the clients are built, never started."""
    spill = DcSpill(KafkaSettings(bootstrap_servers="127.0.0.1:9"), OffloadSettings(dc_initial_latency_ms=100.0),
                    "edge-1")
    assert spill.latency_ms() is None, "not started: nothing is spilled"
    spill._open = True  # as if started
    assert spill.latency_ms() == pytest.approx(100.0, abs=1.0)
    spill.model.idle_since = None
    spill.model.latency_ms = 900.0
    assert spill.latency_ms() == pytest.approx(900.0)
