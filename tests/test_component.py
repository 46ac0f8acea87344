"""The one component lifecycle: run(stop) / ready() / live() / stats, run together by run_components."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from common.component import Component, numbers, run_components


@dataclass
class _Stats:
    handled: int = 0
    lag_s: float = 0.5
    up: bool = True  # not a figure
    history: list[int] = field(default_factory=list)  # not a figure


class _Part:
    def __init__(self, name: str, fail: BaseException | None = None) -> None:
        self.name = name
        self.fail = fail
        self.stats = _Stats()
        self.running = asyncio.Event()
        self.finished = False

    async def run(self, stop: asyncio.Event) -> None:
        self.running.set()
        if self.fail is not None:
            raise self.fail
        await stop.wait()
        self.finished = True

    def ready(self) -> bool:
        return self.running.is_set()

    def live(self) -> bool:
        return True


def test_the_parts_are_components_and_numbers_reads_their_figures() -> None:
    part = _Part("a")
    assert isinstance(part, Component)
    assert numbers(part.stats) == {"handled": 0, "lag_s": 0.5}


async def test_components_run_together_until_stop() -> None:
    parts = [_Part("a"), _Part("b")]
    stop = asyncio.Event()
    running = asyncio.create_task(run_components(parts, stop))
    for part in parts:
        await asyncio.wait_for(part.running.wait(), 5)
    assert not running.done()
    stop.set()
    await asyncio.wait_for(running, 5)
    assert all(p.finished for p in parts)


async def test_a_component_that_fails_stops_the_others_and_its_error_is_raised() -> None:
    healthy, broken = _Part("healthy"), _Part("broken", fail=RuntimeError("a bug"))
    stop = asyncio.Event()
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(run_components([healthy, broken], stop), 5)
    assert stop.is_set() and healthy.finished


async def test_no_components_waits_for_stop() -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(run_components([], stop), 5)
