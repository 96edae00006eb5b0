"""The dynamic batcher: merging, limits, length bucketing, groups, errors, shutdown."""

import asyncio
import threading

import pytest

from rlhf.core.batching import BatcherClosed, DynamicBatcher, _Pending, _tightest_window
from tests.helpers import hang_guard


class Recorder:
    """A process function that records the batches it was given (and their thread)."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, items):
        import time

        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        time.sleep(self.delay)
        return [x * 10 for x in items]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_a_batch_and_results_keep_order():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, name="t", max_batch_size=64, max_wait_ms=50)
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(8)))
        await batcher.close()
        return results

    results = run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(8)]
    assert len(rec.batches) == 1 and len(rec.batches[0]) == 16
    assert all(name.startswith("t-model") for name in rec.threads)  # off the event loop


def test_max_batch_size_is_respected():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, name="t", max_batch_size=4, max_wait_ms=20)
        await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        await batcher.close()

    run(main())
    assert sorted(len(b) for b in rec.batches) == [2, 4, 4]
    assert sorted(x for b in rec.batches for x in b) == list(range(10))


def test_batches_are_cut_by_length_and_groups_never_mix():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(
            rec, name="t", max_batch_size=2, max_wait_ms=30, length_of=lambda x: x, group_of=lambda x: x % 2
        )
        await batcher.submit([1, 100, 3, 98, 5, 96])
        await batcher.close()

    run(main())
    for batch in rec.batches:
        assert len({x % 2 for x in batch}) == 1
        assert max(batch) - min(batch) <= 4  # similar lengths together: (1,3) (5,...) never (1,100)


def test_tightest_window_contains_the_oldest_item():
    items = [_Pending(item=n, length=n, group=None, future=None) for n in [1, 2, 3, 50, 51, 52]]
    window = _tightest_window(items, must_include=3, size=3)
    assert [p.length for p in window] == [50, 51, 52]
    assert [p.length for p in _tightest_window(items, must_include=2, size=3)] == [1, 2, 3]


def test_errors_reach_every_caller_and_the_batcher_keeps_working():
    calls = []

    def process(items):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("boom")
        return items

    async def main():
        batcher = DynamicBatcher(process, name="t", max_batch_size=8, max_wait_ms=10)
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit([1, 2])
        assert await batcher.submit([3]) == [3]
        await batcher.close()

    run(main())


def test_close_finishes_queued_work_then_refuses():
    rec = Recorder(delay=0.05)

    async def main():
        batcher = DynamicBatcher(rec, name="t", max_batch_size=2, max_wait_ms=1)
        pending = [asyncio.ensure_future(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0.01)
        await batcher.close()
        assert all(e.future.done() for e in batcher._pending) and not batcher._pending
        results = await asyncio.wait_for(asyncio.gather(*pending), timeout=hang_guard(30))
        assert results == [[i * 10] for i in range(5)]
        with pytest.raises(BatcherClosed):
            await batcher.submit([1])

    run(main())


def test_run_exclusive_runs_between_batches_on_the_model_thread():
    order = []

    def process(items):
        order.append(("batch", tuple(items)))
        return items

    async def main():
        batcher = DynamicBatcher(process, name="t", max_batch_size=8, max_wait_ms=5)
        first = asyncio.ensure_future(batcher.submit([1]))
        await first
        await batcher.run_exclusive(lambda: order.append(("swap", threading.current_thread().name)))
        await batcher.submit([2])
        await batcher.close()

    run(main())
    assert [o[0] for o in order] == ["batch", "swap", "batch"]
    assert order[1][1].startswith("t-model")


def test_concurrency_runs_batches_side_by_side_and_exclusive_work_alone():
    import time

    active, peak, log = [0], [0], []
    lock = threading.Lock()

    def process(items):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return items

    def exclusive():
        log.append(active[0])  # no batch is running while this runs

    async def main():
        batcher = DynamicBatcher(process, name="t", max_batch_size=2, max_wait_ms=1, concurrency=2)
        work = asyncio.gather(*(batcher.submit([i]) for i in range(8)))
        await asyncio.sleep(0.02)  # batches are running
        await batcher.run_exclusive(exclusive)
        results = await work
        await batcher.close()
        return results

    assert run(main()) == [[i] for i in range(8)]
    assert peak[0] == 2 and log == [0]


def test_full_batches_run_without_waiting_out_the_delay():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, name="t", max_batch_size=4, max_wait_ms=10_000)
        # 8 items with an enormous delay: only the filled groups can make them run
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit([i]) for i in range(8))), timeout=5)
        await batcher.close()
        return results

    assert run(main()) == [[i * 10] for i in range(8)]
    assert sorted(len(b) for b in rec.batches) == [4, 4]


def test_exclusive_work_never_overlaps_batches_or_itself():
    import time

    active, overlaps = {"batch": 0, "exclusive": 0}, []
    lock = threading.Lock()

    def track(kind):
        with lock:
            active[kind] += 1
            if active["exclusive"] > 1 or (active["exclusive"] and active["batch"]):
                overlaps.append(dict(active))
        time.sleep(0.03)
        with lock:
            active[kind] -= 1

    def process(items):
        track("batch")
        return items

    async def main():
        batcher = DynamicBatcher(process, name="t", max_batch_size=8, max_wait_ms=20, concurrency=2)
        waiting = asyncio.ensure_future(batcher.submit([1]))  # the loop sits in its 20 ms wait
        await asyncio.sleep(0.005)
        await asyncio.gather(
            batcher.run_exclusive(lambda: track("exclusive")), batcher.run_exclusive(lambda: track("exclusive"))
        )
        result = await waiting
        await batcher.close()
        return result

    assert run(main()) == [1]
    assert overlaps == []


def test_cancelled_items_are_not_computed_and_do_not_count_towards_a_batch():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, name="t", max_batch_size=4, max_wait_ms=10_000)
        first = [asyncio.ensure_future(batcher.submit([i])) for i in range(3)]
        await asyncio.sleep(0.01)  # queued; the batcher waits for a fourth item
        first[0].cancel()
        first[1].cancel()
        await asyncio.sleep(0.01)
        later = asyncio.gather(*(batcher.submit([i]) for i in (10, 11, 12)))
        results = await asyncio.wait_for(asyncio.gather(first[2], later), timeout=5)
        await batcher.close()
        return results

    assert run(main()) == [[2 * 10], [[100], [110], [120]]]
    assert [sorted(b) for b in rec.batches] == [[2, 10, 11, 12]]
