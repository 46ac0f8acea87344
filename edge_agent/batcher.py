"""A dynamic batcher with Triton semantics, and a delay that adapts to the load.

Items wait in a bounded queue. A batch is dispatched as soon as ``max_batch_size`` items
are there; otherwise when the oldest waiting item has waited ``max_queue_delay_s``. One
batch runs at a time, in an executor thread, so the event loop never runs the model.
While a batch runs, new items queue up and form the next batch, which is why batches
grow with load.

Triton's ``max_queue_delay`` is fixed: a lone frame on an idle device waits the whole
delay for company that is not coming. With ``adaptive=True`` (the default) the batcher
keeps a moving average of the gap between arrivals and, when the queue is empty, waits
for the next item only about as long as that gap predicts (at most twice the gap, never
past the fixed delay). Sparse traffic is dispatched at once; dense traffic still batches.
The device is idle whenever the batcher collects (one batch at a time), so an empty queue
is the only reason to wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchStats", "DynamicBatcher", "Overloaded", "adaptive_wait_s"]

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """The batcher queue is full: the caller must shed (and count) the item."""


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    items: int = 0
    overloaded: int = 0
    largest: int = 0


GAP_WEIGHT = 0.2  # weight of the newest inter-arrival gap in the moving average


def adaptive_wait_s(remaining_s: float, gap_s: float | None) -> float:
    """How long to wait for one more item: 0 when none is expected before the deadline."""
    if gap_s is None or gap_s >= remaining_s:
        return 0.0  # sparse traffic (or nothing seen yet): the next item would come too late
    return min(remaining_s, 2.0 * gap_s)


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    enqueued_s: float
    future: asyncio.Future[R]


class DynamicBatcher(Generic[T, R]):
    """Collects items submitted from the event loop into batches for ``run_batch``.

    ``run_batch`` gets a list of items and must return one result per item, in order;
    it runs in ``executor`` (a private one-thread pool by default). If it raises, every
    item of that batch gets the exception.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_pending: int,
        executor: Executor | None = None,
        adaptive: bool = True,
    ) -> None:
        if max_batch_size < 1 or max_pending < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size and max_pending must be >= 1, delay >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.adaptive = adaptive
        self.gap_s: float | None = None  # moving average of the inter-arrival gap
        self._last_arrival_s: float | None = None
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue(maxsize=max_pending)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="batcher")
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Finish the batch in flight, fail what still waits, release the executor."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RuntimeError("batcher stopped"))
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; return the future of its result. Raise :class:`Overloaded` if full."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        if self._last_arrival_s is not None:
            # A gap beyond 4x the delay just means "sparse": cap it so one idle spell
            # does not hide a burst that follows it.
            gap = min(now - self._last_arrival_s, 4.0 * self.max_queue_delay_s)
            self.gap_s = gap if self.gap_s is None else (1 - GAP_WEIGHT) * self.gap_s + GAP_WEIGHT * gap
        self._last_arrival_s = now
        try:
            self._queue.put_nowait(_Pending(item, now, future))
        except asyncio.QueueFull:
            self.stats.overloaded += 1
            raise Overloaded(f"{self._queue.maxsize} items already wait") from None
        return future

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result."""
        return await self.submit_nowait(item)

    async def _collect(self) -> list[_Pending[T, R]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued_s + self.max_queue_delay_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            wait = adaptive_wait_s(remaining, self.gap_s) if self.adaptive else remaining
            if wait <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), wait))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            items = [p.item for p in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                for p, r in zip(batch, results):
                    if not p.future.done():
                        p.future.set_result(r)
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
