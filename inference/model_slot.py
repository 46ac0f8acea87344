"""A model slot: the serving version of one model, swapped atomically.

A batch takes :meth:`ModelSlot.current` once and runs to its end on that version, so a
swap never tears a batch; every result names the version that produced it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Loaded", "ModelSlot"]

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Loaded(Generic[M]):
    """A loaded model and the name/version it is known by."""

    model: M
    name: str
    version: str


class ModelSlot(Generic[M]):
    """Holds the serving :class:`Loaded` model; readers never block, writers swap whole."""

    def __init__(self, initial: Loaded[M]) -> None:
        self._current = initial
        self._previous: Loaded[M] | None = None
        self._lock = threading.Lock()
        self.swaps = 0

    def current(self) -> Loaded[M]:
        """The serving model (a plain attribute read: atomic under the GIL)."""
        return self._current

    def swap(self, new: Loaded[M]) -> Loaded[M]:
        """Serve ``new`` from the next batch on; return the version it replaced."""
        with self._lock:
            old, self._current = self._current, new
            self._previous = old
            self.swaps += 1
            return old

    def rollback(self) -> Loaded[M]:
        """Serve the version before the last swap again."""
        with self._lock:
            if self._previous is None:
                raise RuntimeError("no previous version to roll back to")
            self._current, self._previous = self._previous, self._current
            self.swaps += 1
            return self._current
