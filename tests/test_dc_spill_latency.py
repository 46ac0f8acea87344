"""The DC path's predicted latency (no broker: the clients are built, never started)."""

from __future__ import annotations

import time

import pytest

from common.offload_settings import OffloadSettings
from common.settings import KafkaSettings
from edge_agent.dc_spill import _RELAX_S, DcSpill


async def test_dc_latency_counts_requests_out_and_relaxes_when_idle() -> None:
    spill = DcSpill(KafkaSettings(bootstrap_servers="127.0.0.1:9"), OffloadSettings(dc_initial_latency_ms=100.0),
                    "edge-1")
    assert spill.latency_ms() == pytest.approx(100.0, abs=1.0)
    spill._latency_ms = 900.0  # measured slow, then nothing sent
    spill._idle_since = time.monotonic()
    assert spill.latency_ms() == pytest.approx(900.0, rel=0.01)
    spill._idle_since = time.monotonic() - 2 * _RELAX_S  # two half-lives idle: 100 + 800 / 4
    assert spill.latency_ms() == pytest.approx(300.0, rel=0.01)
    now = time.monotonic()
    spill._idle_since = None
    spill._latency_ms, spill._per_item_ms = 200.0, 10.0
    spill._started = {"a": now - 2.0, "b": now}  # one out for 2 s: the DC may have stopped answering
    assert spill.latency_ms() == pytest.approx(2000.0 + 2 * 10.0, rel=0.01)
