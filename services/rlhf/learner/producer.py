"""Rollouts ahead of the learner (--rollout-ahead N): while the learner computes step s's update, the services
generate, score and take the reference log-probs of the batches of steps s+1 ... s+N.

    producer = Producer(collect, prompts, batch_size, ahead=N, step=s)   # N worker threads
    batch = producer.take(s)                # blocks until step s's batch is ready (time/learner_idle)
    ...update...
    producer.weights_ready(s + 1)           # the replicas serve version s+1: batch s+1+N may start

A worker starts step t's batch only when the learner has taken step t - N's batch and the replicas serve at least
weights version t - N, so a sample is at most N versions old when it is trained on, unless a replica lagged (it
restarted, or missed a push). The consumer checks every batch (`fresh_batch`): one older than step -
--max-staleness is dropped, counted and its prompts regenerated, never trained on.

Batches cover the prompt stream in order, each recording the stream's cursor after its prompts, and the learner
trains them in order: the cursor of the last batch trained on is exactly which prompts have been used, and what a
checkpoint records. Batches in flight at a checkpoint are not saved: on resume the producer starts again from that
cursor, so each prompt of an epoch is trained on exactly once, however the run was stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rlhf.learner.data import CursorSampler
from rlhf.learner.retries import ServiceDown


class Collected(Protocol):
    """What `collect` returns: a batch's samples, as the services gave them."""

    @property
    def weights_version(self) -> int:
        """The oldest weights version among its samples."""

    def __len__(self) -> int:
        """Its number of samples."""


@dataclass
class Batch:
    step: int  # the step it is meant for (its sampling seeds come from it)
    prompts: list[str]
    cursor: int  # the prompt stream's cursor after these prompts: recorded once the batch is trained on
    collected: Collected

    @property
    def weights_version(self) -> int:
        return self.collected.weights_version


class Producer:
    """Worker threads that keep up to `ahead` future steps' batches in flight on the services."""

    def __init__(
        self,
        collect: Callable[[list[str], int], Collected],
        prompts: CursorSampler,
        batch_size: int,
        ahead: int,
        step: int,
    ):
        self.collect, self.batch_size, self.ahead = collect, batch_size, ahead
        self.stream = CursorSampler(prompts.items, prompts.seed, prompts.cursor)  # its own cursor: runs ahead
        self.taken = step - 1  # the last step whose batch the learner took
        self.ready_version = step  # the replicas serve at least this weights version
        self.next_step = step  # the next step to start a batch for
        self.done: dict[int, Batch | BaseException] = {}
        self.collecting: dict[int, int] = {}  # step -> prompts, the batches under way
        self.stopped = False
        self.services_idle = 0.0  # seconds with no batch under way, since the last take
        self._idle_since: float | None = None
        self._cond = threading.Condition()
        self._workers = [
            threading.Thread(target=self._work, name=f"rollout-ahead-{i}", daemon=True) for i in range(ahead)
        ]
        for worker in self._workers:
            worker.start()

    # --- the workers' side ---
    def _may_start(self, step: int) -> bool:
        return step <= self.taken + self.ahead and step - self.ahead <= self.ready_version

    def _claim(self) -> tuple[int, list[str], int] | None:
        """The next step, its prompts and the cursor after them, once the bounds allow; None once stopped."""
        with self._cond:
            while not self.stopped and not self._may_start(self.next_step):
                if not self.collecting and self._idle_since is None:
                    self._idle_since = time.perf_counter()
                self._cond.wait()
            if self.stopped:
                return None
            if self._idle_since is not None:
                self.services_idle += time.perf_counter() - self._idle_since
                self._idle_since = None
            step, prompts = self.next_step, self.stream.take(self.batch_size)
            self.next_step += 1
            self.collecting[step] = len(prompts)
            return step, prompts, self.stream.cursor

    def _work(self) -> None:
        while (claim := self._claim()) is not None:
            step, prompts, cursor = claim
            try:
                outcome: Batch | BaseException = Batch(step, prompts, cursor, self.collect(prompts, step))
            except BaseException as err:  # handed to the learner, which takes the checkpoint-and-stop path
                outcome = err
            with self._cond:
                del self.collecting[step]
                self.done[step] = outcome
                self._cond.notify_all()

    # --- the learner's side ---
    def take(self, step: int) -> tuple[Batch, float]:
        """Step `step`'s batch, and the seconds the learner waited for it; raises what collecting it raised."""
        start = time.perf_counter()
        with self._cond:
            if step != self.taken + 1:
                raise ValueError(f"batches are taken in order: step {self.taken + 1} next, not {step}")
            while step not in self.done:
                self._cond.wait()
            outcome = self.done.pop(step)
            self.taken = step
            self._cond.notify_all()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome, time.perf_counter() - start

    def regenerate(self, batch: Batch) -> Batch:
        """The same prompts collected again, now (the learner waits: it is counted as its idle time)."""
        return Batch(batch.step, batch.prompts, batch.cursor, self.collect(batch.prompts, batch.step))

    def weights_ready(self, version: int) -> None:
        """The replicas now serve weights version `version`."""
        with self._cond:
            self.ready_version = max(self.ready_version, version)
            self._cond.notify_all()

    def take_services_idle(self) -> float:
        """Seconds the services waited for the learner since the last call."""
        with self._cond:
            now = time.perf_counter()
            if self._idle_since is not None:
                self.services_idle += now - self._idle_since
                self._idle_since = now
            idle, self.services_idle = self.services_idle, 0.0
        return idle

    def in_flight(self) -> list[tuple[int, str, int]]:
        """(step, "collecting" or "ready", prompts) for every batch not yet taken, by step."""
        with self._cond:
            rows = [(step, "collecting", n) for step, n in self.collecting.items()]
            rows += [(step, "ready", len(b.prompts)) for step, b in self.done.items() if isinstance(b, Batch)]
        return sorted(rows)

    def stop(self, timeout: float = 5.0) -> None:
        """No new batches; wait up to `timeout` for those under way (their services calls give up on abort)."""
        with self._cond:
            self.stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))


class StaleWeights(ServiceDown):
    """A batch came too stale again and again: a replica keeps serving old weights."""


def fresh_batch(
    producer: Producer,
    step: int,
    max_staleness: int,
    agree: Callable[[bool], bool] = lambda stale: stale,
    together: Callable = lambda fn, *args: fn(*args),
    attempts: int = 3,
) -> tuple[Batch, int, float]:
    """Step `step`'s batch with every sample at most max_staleness versions old: an older batch is dropped and its
    prompts are regenerated. Under torchrun, `agree` makes every rank drop its share if any rank's is stale, and
    `together` (rlhf.learner.retries.on_all_ranks) makes every rank raise if taking or regenerating failed on one.
    Returns (the batch, the samples dropped, the seconds the learner waited)."""
    start = time.perf_counter()
    batch, _ = together(producer.take, step)
    dropped = 0
    for _attempt in range(attempts + 1):
        if not agree(batch.weights_version < step - max_staleness):
            return batch, dropped, time.perf_counter() - start
        if _attempt == attempts:
            break
        dropped += len(batch.collected)
        batch = together(producer.regenerate, batch)
    raise StaleWeights(
        f"step {step}'s batch came with weights version {batch.weights_version}, more than --max-staleness "
        f"{max_staleness} old, {attempts + 1} times"
    )
