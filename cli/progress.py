"""Byte progress of ``fetch-models``: one tqdm bar per artifact, on stderr."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Self

from tqdm import tqdm

__all__ = ["ByteBars"]


class ByteBars:
    """``update(name, done, total)`` draws (and, once complete, closes) a bar per artifact name.

    Not a terminal (a build log), the bars redraw at most every 5 s."""

    def __init__(self, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._bars: dict[str, tqdm] = {}
        self._done: set[str] = set()
        self.seen: dict[str, tuple[int, int]] = {}  # last (done, total) of each artifact

    def update(self, name: str, done: int, total: int) -> None:
        self.seen[name] = (done, total)
        if not self._enabled or name in self._done:
            return
        bar = self._bars.get(name)
        if bar is None:
            bar = self._bars[name] = tqdm(desc=name, total=total or None, unit="B", unit_scale=True,
                                          unit_divisor=1024, file=sys.stderr, leave=True, dynamic_ncols=True,
                                          mininterval=0.1 if sys.stderr.isatty() else 5.0)
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()
            self._done.add(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for bar in self._bars.values():
            bar.close()
