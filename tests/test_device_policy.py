"""The device placement rule, from the edge's published load and the device profile."""

from __future__ import annotations

import pytest

from common.device_settings import DeviceProfileSettings
from placement.device import EdgeShare, choose, estimates
from topics.status import EdgeLoad

PROFILE = DeviceProfileSettings()


def load(queue_ms: float, service_ms: float = 20.0) -> EdgeLoad:
    return EdgeLoad(queue_delay_ms=queue_ms, service_ms={"fer": service_ms}, utilisation=0.5,
                    capacity_per_s=1000 / service_ms)


def test_fixed_policies_are_obeyed() -> None:
    for policy in ("edge", "crops", "local"):
        assert choose(policy, 50_000, load(10_000), PROFILE) == policy
    with pytest.raises(ValueError):
        choose("cloud", 1, None, PROFILE)


def test_idle_edge_gets_the_frame_a_busy_edge_does_not() -> None:
    assert choose("auto", 50_000, None, PROFILE) == "edge"
    assert choose("auto", 50_000, load(10.0), PROFILE) == "edge"
    assert choose("auto", 50_000, load(2_000.0), PROFILE) == "local"


def test_energy_budget_rules_out_device_compute() -> None:
    poor = PROFILE.model_copy(update={"energy_budget_j": 0.01})
    assert choose("auto", 50_000, load(2_000.0), poor) == "edge"  # only the radio fits the budget


def test_nothing_in_time_takes_the_fastest() -> None:
    est = {e.placement: e for e in estimates(50_000, load(2_000.0), PROFILE)}
    assert est["local"].latency_ms < min(est["crops"].latency_ms, est["edge"].latency_ms)
    assert choose("auto", 50_000, load(2_000.0), PROFILE, deadline_ms=1.0) == "local"


def test_estimates_count_bytes_and_energy() -> None:
    est = {e.placement: e for e in estimates(40_000, load(0.0), PROFILE, faces=2)}
    assert est["edge"].bytes_sent == 40_000 and est["local"].bytes_sent == 0
    assert est["crops"].bytes_sent == 2 * PROFILE.crop_bytes
    assert est["edge"].energy_j == pytest.approx(40_000 * PROFILE.radio_j_per_byte)
    assert est["local"].energy_j > est["edge"].energy_j


def test_an_edge_turning_requests_away_is_avoided() -> None:
    turned = EdgeLoad(queue_delay_ms=10.0, service_ms={"fer": 20.0}, utilisation=1.0, capacity_per_s=50.0,
                      overflow=0.5)
    assert choose("auto", 50_000, turned, PROFILE) == "local"


def test_edge_share_halves_on_overflow_and_grows_back() -> None:
    share = EdgeShare(decrease=0.5, increase=0.25)
    busy = EdgeLoad(10.0, {"fer": 20.0}, 1.0, 50.0, overflow=0.5)
    share.update(busy, 1, 0.05)
    share.update(busy, 1, 0.05)  # the same status counts once
    assert share.share == 0.5
    sent = [share.admit() for _ in range(8)]
    assert sent.count(True) == 4
    share.update(busy, 2, 0.05)
    assert share.share == 0.25
    share.update(load(5.0), 3, 0.05)
    assert share.share == 0.5


def test_a_shed_reply_halves_the_share_at_most_once_per_hold() -> None:
    share = EdgeShare(shed_hold_s=0.25)
    share.on_shed(10.0)
    assert share.share == pytest.approx(0.5)
    share.on_shed(10.1)  # frames sent before the cut are still coming back shed
    assert share.share == pytest.approx(0.5)
    share.on_shed(10.3)
    assert share.share == pytest.approx(0.25)


def test_edge_share_grows_only_while_the_edge_shows_room() -> None:
    share = EdgeShare(decrease=0.5, increase=0.1)
    share.share = 0.5
    share.update(load(100.0, 20.0), 1, 0.05, room_ms=250.0)  # 120 ms of 250: room
    assert share.share == pytest.approx(0.6)
    share.update(load(300.0, 20.0), 2, 0.05, room_ms=250.0)  # a long queue: hold
    assert share.share == pytest.approx(0.6)
    some = EdgeLoad(10.0, {"fer": 20.0}, 1.0, 50.0, overflow=0.02)  # turned a few away: hold
    share.update(some, 3, 0.05, room_ms=250.0)
    assert share.share == pytest.approx(0.6)
    share.update(None, 4, 0.05, room_ms=250.0)  # unknown edge: idle
    assert share.share == pytest.approx(0.7)


def test_device_queue_makes_local_slower() -> None:
    est = {e.placement: e for e in estimates(50_000, load(0.0), PROFILE, device_queue_ms=300.0)}
    idle = {e.placement: e for e in estimates(50_000, load(0.0), PROFILE)}
    assert est["local"].latency_ms == pytest.approx(idle["local"].latency_ms + 300.0)
    assert est["crops"].latency_ms == pytest.approx(idle["crops"].latency_ms + 300.0)
    assert est["edge"].latency_ms == pytest.approx(idle["edge"].latency_ms)


def test_edge_share_slow_start() -> None:
    share = EdgeShare(start=0.25)
    assert [share.admit() for _ in range(8)].count(True) == 2  # every fourth frame before any status
    share.update(load(5.0), 1, 0.05, room_ms=250.0)
    assert share.share == pytest.approx(0.35)
