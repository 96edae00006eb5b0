"""The rollout producer against in-process fakes: batches come in order over the prompt stream, never more than
--rollout-ahead steps or weights versions ahead, and stale ones are dropped, counted and regenerated."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from rlhf.learner.data import CursorSampler
from rlhf.learner.producer import Producer, StaleWeights, fresh_batch
from tests.helpers import hang_guard

PROMPTS = [f"prompt {i}" for i in range(10)]


@dataclass
class FakeCollected:
    prompts: list[str]
    weights_version: int

    def __len__(self) -> int:
        return 2 * len(self.prompts)  # two samples per prompt


class FakeServices:
    """Collects a batch in `seconds`, with the weights the replicas serve at its start (minus `lag` for the steps
    named in it, as a replica that missed a push); records the bounds each batch started under."""

    def __init__(self, seconds: float = 0.0, lag: dict[int, int] | None = None):
        self.seconds, self.lag = seconds, dict(lag or {})
        self.producer: Producer | None = None
        self.started: list[tuple[int, int, int]] = []  # (step, the learner's last taken step, ready version)
        self.calls: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.under_way = self.most_under_way = 0
        self.intervals: list[tuple[float, float]] = []  # (start, end) of each collection

    def collect(self, prompts: list[str], step: int) -> FakeCollected:
        with self.lock:
            self.started.append((step, self.producer.taken, self.producer.ready_version))
            self.calls[step] += 1
            self.under_way += 1
            self.most_under_way = max(self.most_under_way, self.under_way)
            version = self.producer.ready_version - self.lag.pop(step, 0)
        start = time.perf_counter()
        time.sleep(self.seconds)
        with self.lock:
            self.under_way -= 1
            self.intervals.append((start, time.perf_counter()))
        return FakeCollected(prompts, version)


def producer_of(services: FakeServices, ahead: int, step: int = 0, cursor: int = 0, batch_size: int = 3) -> Producer:
    # the producer's first calls to collect may come before this returns: let them wait for the assignment
    with services.lock:
        services.producer = Producer(services.collect, CursorSampler(PROMPTS, 7, cursor), batch_size, ahead, step)
    return services.producer


def train(
    producer: Producer, steps: range, max_staleness: int, update_seconds: float = 0.0, updates: list | None = None
) -> list:
    """The learner's loop: take each step's fresh batch, 'update' (its (start, end) appended to `updates`), then
    the new weights reach the replicas."""
    trained = []
    for step in steps:
        batch, dropped, waited = fresh_batch(producer, step, max_staleness)
        start = time.perf_counter()
        time.sleep(update_seconds)
        if updates is not None:
            updates.append((start, time.perf_counter()))
        trained.append((batch, dropped, waited))
        producer.weights_ready(step + 1)
    return trained


def test_batches_come_in_order_and_cover_the_prompt_stream_in_order():
    services = FakeServices(seconds=0.01)
    producer = producer_of(services, ahead=2)
    trained = train(producer, range(6), max_staleness=2)
    producer.stop()
    assert [batch.step for batch, _, _ in trained] == list(range(6))
    # the same prompts, in the same order, as a learner taking 3 per step from the stream in lockstep
    lockstep = CursorSampler(PROMPTS, 7)
    for batch, _, _ in trained:
        assert batch.prompts == lockstep.take(3)
        assert batch.cursor == lockstep.cursor


def test_never_more_than_ahead_steps_or_versions_ahead():
    services = FakeServices(seconds=0.02)
    producer = producer_of(services, ahead=2)
    trained = train(producer, range(8), max_staleness=2, update_seconds=0.03)
    producer.stop()
    for step, taken, ready in services.started:
        assert step <= taken + 2, (step, taken)  # at most 2 batches beyond the one being trained on
        assert step - 2 <= ready, (step, ready)  # drawn with weights at most 2 versions behind its step
    assert services.most_under_way <= 2
    assert max(batch.step - batch.weights_version for batch, _, _ in trained) <= 2
    assert all(dropped == 0 for _, dropped, _ in trained)


def test_lockstep_bound_ahead_one_overlaps_one_batch_with_the_update():
    services = FakeServices(seconds=0.05)
    producer = producer_of(services, ahead=1)
    updates: list[tuple[float, float]] = []
    trained = train(producer, range(6), max_staleness=1, update_seconds=0.05, updates=updates)
    producer.stop()
    # a collection runs while the learner updates (lockstep would keep them apart); no wall-clock bound, which a
    # loaded machine could break: the intervals themselves must overlap
    overlapping = [(c, u) for c in services.intervals for u in updates if c[0] < u[1] and u[0] < c[1]]
    assert overlapping, (services.intervals, updates)
    assert max(batch.step - batch.weights_version for batch, _, _ in trained) == 1


def test_a_stale_batch_is_dropped_counted_and_regenerated_with_the_same_prompts():
    # step 4's batch comes from a replica 2 versions behind what it should serve: 3 behind step 4 with ahead 1
    services = FakeServices(lag={4: 2})
    producer = producer_of(services, ahead=1)
    trained = train(producer, range(6), max_staleness=1)
    producer.stop()
    batch, dropped, _ = trained[4]
    assert dropped == 6  # 3 prompts x 2 samples
    assert services.calls[4] == 2  # collected again
    assert batch.weights_version >= 4 - 1
    assert batch.prompts == CursorSampler(PROMPTS, 7, cursor=12).take(3)  # the same prompts, not the next ones
    assert [d for _, d, _ in trained] == [0, 0, 0, 0, 6, 0]


def test_a_batch_that_stays_stale_ends_the_run_instead_of_being_trained_on():
    def always_stale(prompts, step):  # a replica that never takes the new weights
        return FakeCollected(prompts, -10)

    producer = Producer(always_stale, CursorSampler(PROMPTS, 7), 3, ahead=1, step=0)
    with pytest.raises(StaleWeights, match="more than --max-staleness"):
        fresh_batch(producer, 0, max_staleness=1)
    producer.stop()


def test_an_error_collecting_a_batch_reaches_the_learner_when_it_takes_that_batch():
    def broken(prompts, step):
        if step == 1:
            raise ConnectionError("reward service down")
        return FakeCollected(prompts, step)

    producer = Producer(broken, CursorSampler(PROMPTS, 7), 3, ahead=2, step=0)
    producer.take(0)
    with pytest.raises(ConnectionError, match="reward service down"):
        producer.take(1)
    producer.stop()


def test_batches_are_taken_in_order():
    producer = producer_of(FakeServices(), ahead=1)
    with pytest.raises(ValueError, match="in order"):
        producer.take(1)
    producer.stop()


def test_idle_times_say_who_waits_for_whom():
    # slow services, quick learner: the learner waits
    services = FakeServices(seconds=0.05)
    producer = producer_of(services, ahead=1)
    waits = [waited for _, _, waited in train(producer, range(3), max_staleness=1)]
    producer.stop()
    assert sum(waits) > 0.08
    # quick services, slow learner: the services wait
    services = FakeServices()
    producer = producer_of(services, ahead=1)
    train(producer, range(3), max_staleness=1, update_seconds=0.05)
    assert producer.take_services_idle() > 0.08
    producer.stop()


def test_in_flight_lists_the_batches_not_yet_taken():
    services = FakeServices()
    producer = producer_of(services, ahead=2)
    deadline = time.monotonic() + hang_guard(60)
    while [phase for _, phase, _ in producer.in_flight()] != ["ready", "ready"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert producer.in_flight() == [(0, "ready", 3), (1, "ready", 3)]
    producer.stop()


def test_a_resumed_producer_starts_from_the_trained_cursor_so_each_prompt_is_trained_once_per_epoch():
    # 10 prompts, 2 per step: an epoch is 5 steps. The run trains 3 steps with 2 more in flight, then dies; the
    # checkpoint holds the cursor of the last batch trained on, and the resumed producer starts from it.
    services = FakeServices()
    first = producer_of(services, ahead=2, batch_size=2)
    trained = train(first, range(3), max_staleness=2)
    cursor = trained[-1][0].cursor
    first.stop()
    resumed = producer_of(FakeServices(), ahead=2, step=3, cursor=cursor, batch_size=2)
    trained += train(resumed, range(3, 5), max_staleness=2)
    resumed.stop()
    counts = Counter(p for batch, _, _ in trained for p in batch.prompts)
    assert counts == Counter(PROMPTS)
