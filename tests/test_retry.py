"""The shared reconnect backoff."""

from __future__ import annotations

import asyncio

import pytest

from common.retry import Backoff


async def test_delays_double_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(0.001, 0.004)
    stop = asyncio.Event()
    seen = []
    for _ in range(4):
        seen.append(backoff.delay_s)
        assert await backoff.wait(stop) is False
    assert seen == [0.001, 0.002, 0.004, 0.004]
    backoff.reset()
    assert backoff.delay_s == 0.001


async def test_stop_cuts_the_wait_short() -> None:
    backoff = Backoff(3600.0, 3600.0)
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(backoff.wait(stop), 5.0) is True


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


def test_every_reconnect_loop_waits_through_backoff() -> None:
    """No loop sleeps on ``stop`` by hand: the pause between attempts is always a Backoff."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    product = ("common", "topics", "models", "sim", "devices", "edge_agent", "cloud_trainer", "cli")
    for package in product:
        for path in (root / package).rglob("*.py"):
            text = path.read_text().replace(" ", "")
            if path.name != "retry.py":
                assert "wait_for(stop.wait()" not in text and "wait_for(self._stop.wait()" not in text, \
                    f"{path}: use common.retry.Backoff"
