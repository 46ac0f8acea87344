"""The shared reconnect backoff and the restart helper of consumer loops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.retry import Backoff, Restarter

log = logging.getLogger("tests.retry")


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
    with pytest.raises(ValueError):
        Backoff(1.0, 1.0, jitter=1.5)


def test_jitter_draws_between_the_shortened_and_the_full_delay() -> None:
    """A wait is ``delay x (1 - jitter x u)`` for u in [0, 1): never above the delay (``max_s`` bounds
    it), never below ``delay x (1 - jitter)``."""
    for u, expected in ((0.0, 4.0), (0.5, 3.0), (0.999, 2.002)):
        backoff = Backoff(4.0, 4.0, jitter=0.5, rng=lambda u=u: u)
        assert backoff.next_delay_s() == pytest.approx(expected)
    backoff = Backoff(1.0, 8.0, jitter=0.5)  # the real generator stays within the bounds as the delay grows
    for _ in range(200):
        nominal = backoff.delay_s
        assert nominal * 0.5 <= backoff.next_delay_s() <= nominal <= 8.0
    draws = {Backoff(1.0, 1.0, jitter=0.5).next_delay_s() for _ in range(50)}
    assert len(draws) > 1, "jitter spreads the waits of a fleet"


def _instant(**kwargs: object) -> Restarter:
    """A restarter whose every wait is 0 s (jitter 1 x draw 1): restarts happen without sleeping."""
    return Restarter("test loop", log, 1.0, 1.0, jitter=1.0, rng=lambda: 1.0, **kwargs)  # type: ignore[arg-type]


async def test_restarts_the_body_after_an_error_counts_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[BaseException] = []
    restarter = _instant(on_restart=seen.append)
    attempts = 0

    async def body() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"broker gone {attempts}")

    with caplog.at_level(logging.WARNING, logger="tests.retry"):
        await asyncio.wait_for(restarter.run(body, asyncio.Event()), 5.0)
    assert attempts == 3  # ran again after each failure, then returned
    assert restarter.restarts == 2
    assert [str(e) for e in seen] == ["broker gone 1", "broker gone 2"]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "test loop: ConnectionError: broker gone 1", "test loop: ConnectionError: broker gone 2"]


async def test_an_unexpected_error_is_not_retried() -> None:
    restarter = _instant(errors=(ConnectionError,))

    async def body() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await restarter.run(body, asyncio.Event())
    assert restarter.restarts == 0


async def test_stop_cuts_the_wait_between_attempts_short() -> None:
    stop = asyncio.Event()
    failed = asyncio.Event()
    restarter = Restarter("test loop", log, 3600.0, 3600.0, on_restart=lambda _: failed.set())
    attempts = 0

    async def body() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("gone")

    waiting = asyncio.ensure_future(restarter.run(body, stop))
    await asyncio.wait_for(failed.wait(), 5.0)
    assert attempts == 1 and not waiting.done()  # waiting up to an hour before the next attempt
    stop.set()
    await asyncio.wait_for(waiting, 5.0)  # the stop cut the wait short
    assert attempts == 1 and restarter.restarts == 1
    await restarter.run(body, stop)
    assert attempts == 1, "a set stop runs no attempt"


async def test_an_error_while_stopping_is_not_a_restart() -> None:
    stop = asyncio.Event()
    restarter = _instant()

    async def body() -> None:
        stop.set()  # the error that ends this attempt is the shutdown's
        raise ConnectionError("closed")

    await asyncio.wait_for(restarter.run(body, stop), 5.0)
    assert restarter.restarts == 0


async def test_healthy_resets_the_backoff() -> None:
    restarter = Restarter("test loop", log, 1.0, 8.0, jitter=0.0)
    restarter.backoff.next_delay_s()
    restarter.backoff.next_delay_s()
    assert restarter.backoff.delay_s == 4.0
    restarter.healthy()
    assert restarter.backoff.delay_s == 1.0


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
