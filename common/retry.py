"""The one retry policy of every reconnect loop: exponential backoff with jitter, cut short by stop.

:class:`Restarter` is what a consumer loop uses: it runs the loop's body, and when the body fails
with one of the loop's expected errors it applies the one error policy - log a line, count the
restart, wait a jittered backoff bounded by ``max_s``, run the body again. :class:`Backoff` is the
delay schedule underneath, for the rare loop that is not a body to restart (the outbox's send rounds).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

__all__ = ["Backoff", "Restarter"]


class Backoff:
    """Delays between attempts: ``initial_s``, doubling up to ``max_s``; :meth:`reset` after a success.

    ``initial_s == max_s`` gives a fixed retry period. With ``jitter`` (0..1) each wait is drawn
    uniformly from ``[delay x (1 - jitter), delay]``, so a fleet that lost its broker together does
    not reconnect in step; it never exceeds the delay, so ``max_s`` stays the bound.
    """

    def __init__(self, initial_s: float, max_s: float, factor: float = 2.0, jitter: float = 0.0,
                 rng: Callable[[], float] = random.random) -> None:
        if not 0 < initial_s <= max_s or factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        if not 0 <= jitter <= 1:
            raise ValueError("need 0 <= jitter <= 1")
        self.initial_s, self.max_s, self.factor, self.jitter = initial_s, max_s, factor, jitter
        self._rng = rng
        self.delay_s = initial_s

    def reset(self) -> None:
        self.delay_s = self.initial_s

    def next_delay_s(self) -> float:
        """The next wait (jittered), growing the delay after it."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * self.factor, self.max_s)
        return delay * (1.0 - self.jitter * self._rng())

    async def wait(self, stop: asyncio.Event) -> bool:
        """Sleep the current delay (then grow it); return early, True, once ``stop`` is set."""
        try:
            await asyncio.wait_for(stop.wait(), self.next_delay_s())
        except TimeoutError:
            return False
        return True


class Restarter:
    """Runs a consumer loop's body until it returns or ``stop`` is set; restarts it after an error.

    The one error policy: an exception of ``errors`` ends the attempt; unless ``stop`` is set, it is
    logged (one warning, ``name: Type: message``), counted (:attr:`restarts`, and ``on_restart``
    for the owner's own counter) and the body runs again after a jittered backoff (``initial_s``
    doubling to ``max_s``). The body calls :meth:`healthy` once it is connected, so the next failure
    starts again from ``initial_s``. Any other exception propagates: a bug is not retried.
    """

    def __init__(self, name: str, log: logging.Logger, initial_s: float = 1.0, max_s: float = 1.0, *,
                 errors: tuple[type[BaseException], ...] = (Exception,), jitter: float = 0.5,
                 on_restart: Callable[[BaseException], None] | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.name = name
        self.log = log
        self.errors = errors
        self.on_restart = on_restart
        self.backoff = Backoff(initial_s, max_s, jitter=jitter, rng=rng)
        self.restarts = 0

    def healthy(self) -> None:
        """The body is connected: the next restart waits ``initial_s`` again."""
        self.backoff.reset()

    async def run(self, body: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Run ``body`` until it returns or ``stop`` is set, restarting it after each expected error."""
        while not stop.is_set():
            try:
                await body()
                return
            except self.errors as exc:
                if stop.is_set():
                    return
                self.restarts += 1
                if self.on_restart is not None:
                    self.on_restart(exc)
                delay_s = self.backoff.next_delay_s()
                self.log.warning("%s: %s: %s; restarting in %.1fs", self.name, type(exc).__name__, exc, delay_s)
                try:
                    await asyncio.wait_for(stop.wait(), delay_s)
                except TimeoutError:
                    pass
