"""The one retry policy of every reconnect loop: exponential backoff, cut short by stop."""

from __future__ import annotations

import asyncio

__all__ = ["Backoff"]


class Backoff:
    """Delays between attempts: ``initial_s``, doubling up to ``max_s``; :meth:`reset` after a success.

    ``initial_s == max_s`` gives a fixed retry period.
    """

    def __init__(self, initial_s: float, max_s: float, factor: float = 2.0) -> None:
        if not 0 < initial_s <= max_s or factor < 1:
            raise ValueError("need 0 < initial_s <= max_s and factor >= 1")
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.delay_s = initial_s

    def reset(self) -> None:
        self.delay_s = self.initial_s

    async def wait(self, stop: asyncio.Event) -> bool:
        """Sleep the current delay (then grow it); return early, True, once ``stop`` is set."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * self.factor, self.max_s)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return False
        return True
