"""DynamicBatcher: Triton semantics, bounded queue, errors reach every waiter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from edge_agent.batcher import DynamicBatcher, Overloaded


async def test_full_batch_dispatches_without_waiting_for_the_delay() -> None:
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return [i * 2 for i in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=4, max_queue_delay_s=60.0, max_pending=16)
    batcher.start()
    try:
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(8))), 5)
    finally:
        await batcher.stop()
    assert results == [i * 2 for i in range(8)]
    assert sizes == [4, 4]


async def test_partial_batch_runs_after_the_delay() -> None:
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=8, max_queue_delay_s=0.02, max_pending=16)
    batcher.start()
    try:
        assert await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 5) == [1, 2]
    finally:
        await batcher.stop()
    assert sizes == [2]


async def test_items_queued_while_busy_form_the_next_batch() -> None:
    release = threading.Event()
    started = threading.Event()
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            started.set()
            release.wait(5)
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=8, max_queue_delay_s=0.0, max_pending=16)
    batcher.start()
    try:
        first = batcher.submit_nowait(0)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        rest = [batcher.submit_nowait(i) for i in range(1, 6)]
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    finally:
        await batcher.stop()
    assert sizes == [1, 5]


async def test_bounded_queue_raises_overloaded() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(items: Sequence[int]) -> list[int]:
        started.set()
        release.wait(5)
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=1, max_queue_delay_s=0.0, max_pending=2)
    batcher.start()
    try:
        first = batcher.submit_nowait(0)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        queued = [batcher.submit_nowait(1), batcher.submit_nowait(2)]
        with pytest.raises(Overloaded):
            batcher.submit_nowait(3)
        assert batcher.stats.overloaded == 1
        release.set()
        assert await asyncio.wait_for(asyncio.gather(first, *queued), 5) == [0, 1, 2]
    finally:
        release.set()
        await batcher.stop()


async def test_exception_reaches_every_item_of_the_batch() -> None:
    def run(items: Sequence[int]) -> list[int]:
        raise ValueError("model broke")

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=4, max_queue_delay_s=0.01, max_pending=8)
    batcher.start()
    try:
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    finally:
        await batcher.stop()
    assert all(isinstance(o, ValueError) for o in outcomes)


async def test_adaptive_delay_does_not_hold_a_lone_item() -> None:
    """A lone item on an idle batcher runs at once, not after the (here absurd) fixed delay."""
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=8, max_queue_delay_s=600.0,
                                                       max_pending=16)
    assert batcher.adaptive
    batcher.start()
    try:
        assert await asyncio.wait_for(batcher.submit(7), 10) == 7
        assert await asyncio.wait_for(batcher.submit(8), 10) == 8
    finally:
        await batcher.stop()
    assert sizes == [1, 1]


async def test_fixed_delay_holds_a_lone_item_until_the_delay() -> None:
    """adaptive=False keeps Triton's semantics: the lone item waits for company."""
    batcher: DynamicBatcher[int, int] = DynamicBatcher(list, max_batch_size=8, max_queue_delay_s=600.0,
                                                       max_pending=16, adaptive=False)
    batcher.start()
    try:
        first = batcher.submit_nowait(1)
        # Yield (no time passes) so the collector takes the lone item; adaptive=True would
        # dispatch it right here and the sizes would be [1, 7].
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        rest = [batcher.submit_nowait(i) for i in range(2, 9)]  # the 8th item fills the batch
        assert await asyncio.wait_for(asyncio.gather(first, *rest), 10) == list(range(1, 9))
    finally:
        await batcher.stop()
    assert batcher.stats.batches == 1 and batcher.stats.largest == 8


def test_adaptive_wait_follows_the_arrival_gap() -> None:
    from edge_agent.batcher import adaptive_wait_s

    assert adaptive_wait_s(0.004, None) == 0.0  # nothing seen yet
    assert adaptive_wait_s(0.004, 0.040) == 0.0  # 25 frames/s against a 4 ms delay: go now
    assert adaptive_wait_s(0.004, 0.001) == pytest.approx(0.002)  # dense: wait ~2 gaps
    assert adaptive_wait_s(0.004, 0.003) == pytest.approx(0.004)  # never past the deadline


async def test_gap_estimate_tracks_arrivals() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(list, max_batch_size=64, max_queue_delay_s=0.01,
                                                       max_pending=64)
    futures = [batcher.submit_nowait(i) for i in range(20)]  # back to back: tiny gaps
    assert batcher.gap_s is not None and batcher.gap_s < 0.01
    batcher.start()
    try:
        assert await asyncio.wait_for(asyncio.gather(*futures), 10) == list(range(20))
    finally:
        await batcher.stop()
