"""The one lifecycle of a long-running part of a service (a component).

Every component runs from one call, ``await run(stop)``, until ``stop`` is set (it loads, connects,
restarts itself after broker trouble - :class:`common.retry.Restarter` - and cleans up inside
``run``); :meth:`Component.ready` says whether it serves now (what ``/readyz`` reports),
:meth:`Component.live` whether it makes progress (``/livez``: False only when it is stuck with work
pending), :attr:`Component.stats` what it did (a stats dataclass; :func:`numbers` gives its
figures). A process (the edge node) holds a list of components and iterates over it:
:func:`run_components`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

__all__ = ["Component", "numbers", "run_components"]

log = logging.getLogger(__name__)


@runtime_checkable
class Component(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; never raises for broker trouble (a bug does raise)."""

    def ready(self) -> bool:
        """Serving now (a component whose broker is optional to the process stays ready without it)."""

    def live(self) -> bool:
        """Not stuck: False only when work is pending and nothing moved for the stall limit."""

    @property
    def stats(self) -> Any:
        """What it did so far: a stats dataclass (:func:`numbers` reads its figures)."""


def numbers(stats: Any) -> dict[str, float]:
    """The numeric fields of a stats dataclass (others - histories, per-reason maps - left out)."""
    values = ((f.name, getattr(stats, f.name)) for f in fields(stats))
    return {k: v for k, v in values if isinstance(v, int | float) and not isinstance(v, bool)}


async def run_components(components: Sequence[Component], stop: asyncio.Event) -> None:
    """Run every component until ``stop`` is set. One whose ``run`` raises ends them all: ``stop`` is
    set for the others, and its error is raised once they have finished."""
    tasks = [asyncio.create_task(c.run(stop), name=c.name) for c in components]
    if not tasks:
        await stop.wait()
        return
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None and not stop.is_set():
                log.error("component %s failed: %r; stopping the others", task.get_name(), task.exception())
                stop.set()
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    finally:
        stopping.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
