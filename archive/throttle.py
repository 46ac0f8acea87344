"""Login rate limiting: failed logins counted per username and per remote address in a sliding window.

A key (``name:ann`` or ``addr:10.0.0.7``) with ``max_failures`` failures within ``window_s`` is
locked until its oldest failure leaves the window: every login for that name, or from that
address, is refused before the password is checked (so a locked account costs no argon2 work),
even with the right password. A successful login clears its username's failures (not its
address's: one good account must not reset the guessing of another from the same place).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]


class LoginThrottle:
    """Sliding-window failure counts; ``max_keys`` bounds memory (the stalest keys go first)."""

    def __init__(self, max_failures: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after_s(self, name: str, remote: str) -> tuple[str, float] | None:
        """(``"name"`` or ``"address"``, seconds to wait) if this login must be refused, else None."""
        now = self.clock()
        for what, key in (("name", f"name:{name}"), ("address", f"addr:{remote}")):
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                return what, max(0.0, times[len(times) - self.max_failures] + self.window_s - now)
        return None

    def failed(self, name: str, remote: str) -> None:
        now = self.clock()
        for key in (f"name:{name}", f"addr:{remote}"):
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)
        if len(self._failures) > self.max_keys:
            stalest = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in stalest[:len(self._failures) - self.max_keys]:
                del self._failures[key]

    def succeeded(self, name: str) -> None:
        self._failures.pop(f"name:{name}", None)
