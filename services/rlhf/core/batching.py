"""Dynamic batching: merge items from concurrent requests into model batches.

A batch closes when it holds `max_batch_size` items or when its oldest item has waited
`max_wait_ms`. Items wait in one queue; each batch is cut from the oldest item's group
(items that may share a batch, e.g. the same sampling settings) as the run of similar lengths
around it, so little padding is computed and no item starves. Batches run one at a time on a
single worker thread, off the event loop; that thread is also where model weights change
(`run_exclusive`), so a batch never sees two weight versions.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rlhf.core.metrics import BATCH_SECONDS, BATCH_SIZE, PADDING_FRACTION, QUEUE_DELAY

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In]):
    item: In
    length: int
    group: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


QUEUE_FULL_MARK = "(--max-queue)"  # in every QueueFull message: how clients tell overload from other RESOURCE_EXHAUSTED


class QueueFull(RuntimeError):
    """Admission control: the items would take the queue past its bound (the service answers
    RESOURCE_EXHAUSTED at once, and clients back off and retry)."""


class DynamicBatcher(Generic[In, Out]):
    """Runs `process(items) -> outputs` on batches merged across concurrent `submit` calls.

    `concurrency` > 1 lets that many batches run at once on as many threads, for a `process` that
    spreads them over several model instances (e.g. worker processes); weights-changing work
    (`run_exclusive`) still runs alone.
    """

    def __init__(
        self,
        process: Callable[[list[In]], Sequence[Out]],
        *,
        name: str,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        length_of: Callable[[In], int] = lambda _: 1,
        group_of: Callable[[In], Hashable] = lambda _: None,
        concurrency: int = 1,
        max_queue: int | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.process, self.name = process, name
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.length_of, self.group_of = length_of, group_of
        self.concurrency = concurrency
        self.max_queue = max_queue  # most items waiting for a batch (None: unbounded)
        self._pending: list[_Pending[In]] = []
        self._group_sizes: Counter[Hashable] = Counter()
        self._wakeup: asyncio.Event | None = None
        self._worker = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"{name}-model")
        self._running: set[asyncio.Task] = set()
        self._exclusive = 0  # run_exclusive calls waiting or running: no new batch starts meanwhile
        self._exclusive_lock: asyncio.Lock | None = None  # one run_exclusive at a time
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a batch (what --max-queue bounds)."""
        return len(self._pending)

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Queue items and wait for their outputs, in order."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is shutting down")
        if self.max_queue is not None and len(self._pending) + len(items) > self.max_queue:
            raise QueueFull(
                f"{self.name} is overloaded: {len(self._pending)} items queued, {len(items)} more would "
                f"pass its limit of {self.max_queue} {QUEUE_FULL_MARK}; retry with backoff"
            )
        self._ensure_started()
        loop = asyncio.get_running_loop()
        entries = [_Pending(it, self.length_of(it), self.group_of(it), loop.create_future()) for it in items]
        self._enqueue(entries)
        if len(entries) == 1:
            return [await entries[0].future]
        return list(await asyncio.gather(*(e.future for e in entries)))

    def _enqueue(self, entries: list[_Pending[In]]) -> None:
        # Wake the loop only when it has something new to act on: a first item (starts the
        # delay), or a group that just filled a batch. Under load most submits wake nothing.
        first = not self._pending
        self._pending.extend(entries)
        filled = False
        for entry in entries:
            self._group_sizes[entry.group] += 1
            filled |= self._group_sizes[entry.group] == self.max_batch_size
        if first or filled:
            self._wakeup.set()

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run fn on a model thread while no batch runs (e.g. swapping weights)."""
        self._ensure_started()
        self._exclusive += 1
        try:
            async with self._exclusive_lock:
                while self._running:
                    await asyncio.wait(set(self._running))
                return await asyncio.get_running_loop().run_in_executor(self._worker, fn)
        finally:
            self._exclusive -= 1
            self._wakeup.set()

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wakeup, self._exclusive_lock = asyncio.Event(), asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-batcher")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if self._running and (len(self._running) >= self.concurrency or self._exclusive):
                await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
                continue
            if not self._pending or self._exclusive:
                if self._closed and not self._pending:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not await self._wait_for_batch():
                continue  # exclusive work came first, or the oldest item was cancelled: look again
            task = loop.create_task(self._run_batch(loop, self._cut_batch()))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _drop_cancelled(self) -> None:
        """Items whose caller gave up (deadline, cancel) are dropped rather than computed."""
        if any(p.future.cancelled() for p in self._pending):
            self._pending = [p for p in self._pending if not p.future.cancelled()]
            self._group_sizes = Counter(p.group for p in self._pending)

    async def _wait_for_batch(self) -> bool:
        """Wait until the oldest item's group fills a batch or the oldest item's delay runs out. False if
        the batch should not be cut after all: run_exclusive is waiting, or the oldest item was cancelled."""
        loop = asyncio.get_running_loop()
        oldest = self._pending[0]
        delay = oldest.enqueued + self.max_wait - time.perf_counter()
        timer = loop.call_later(delay, self._wakeup.set) if delay > 0 else None
        try:
            while not self._closed and self._group_sizes[oldest.group] < self.max_batch_size:
                if time.perf_counter() >= oldest.enqueued + self.max_wait or self._exclusive:
                    break
                if oldest.future.cancelled():
                    return False
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            if timer is not None:
                timer.cancel()
        return not (self._exclusive or oldest.future.cancelled())

    def _cut_batch(self) -> list[_Pending[In]]:
        """The oldest item plus the items of its group closest to it in length."""
        oldest = self._pending[0]
        if len(self._pending) <= self.max_batch_size and self._group_sizes[oldest.group] == len(self._pending):
            group = sorted(self._pending, key=lambda p: p.length)  # the common case: take everything
        else:
            group = sorted((p for p in self._pending if p.group == oldest.group), key=lambda p: p.length)
        if len(group) > self.max_batch_size:
            group = _tightest_window(group, group.index(oldest), self.max_batch_size)
        if len(group) == len(self._pending):
            self._pending = []
        else:
            chosen = {id(p) for p in group}
            self._pending = [p for p in self._pending if id(p) not in chosen]
        self._group_sizes[oldest.group] -= len(group)
        return group

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[In]]) -> None:
        started = time.perf_counter()
        for p in batch:
            QUEUE_DELAY.labels(self.name).observe(started - p.enqueued)
        BATCH_SIZE.labels(self.name).observe(len(batch))
        lengths = [p.length for p in batch]
        PADDING_FRACTION.labels(self.name).observe(1 - sum(lengths) / (max(lengths) * len(lengths) or 1))
        try:
            outputs = await loop.run_in_executor(self._worker, self.process, [p.item for p in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{self.name}: batch of {len(batch)} gave {len(outputs)} outputs")
        except Exception as err:  # noqa: BLE001 - the error belongs to the callers of this batch
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
        else:
            for p, out in zip(batch, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(out)
        BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        self._wakeup.set()  # a model slot is free

    async def close(self) -> None:
        """Finish the queued work, then stop the worker."""
        self._closed = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
            while self._running:
                await asyncio.wait(set(self._running))
        self._worker.shutdown(wait=True)


def _tightest_window(items: list[_Pending], must_include: int, size: int) -> list[_Pending]:
    """The `size` consecutive items (sorted by length) containing index `must_include` with least spread."""
    first = max(0, must_include - size + 1)
    last = min(must_include, len(items) - size)
    best = min(range(first, last + 1), key=lambda s: items[s + size - 1].length - items[s].length)
    return items[best : best + size]


def by_length_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices sorted by length, cut into chunks of `size`: in-process batches with little padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[s : s + size] for s in range(0, len(order), size)]


def check_batch_settings(config) -> None:
    """A service's batching flags make sense (every model service's config has these four), in one line if not."""
    from rlhf.core.errors import UserError

    if min(config.max_batch_size, config.max_items_per_request) < 1 or config.max_wait_ms < 0:
        raise UserError("--max-batch-size and --max-items-per-request must be >= 1, --max-wait-ms >= 0")
    if config.max_queue < config.max_items_per_request:
        raise UserError("--max-queue must be at least --max-items-per-request")
