"""What the running loop shares with its control API (and the SIGTERM handler), across threads.

The loop publishes its phase, metrics and weights here; requests to checkpoint or stop are
queued here and served by the loop between steps, when the models are in a consistent state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CheckpointResult:
    path: str
    step: int


class LearnerControl:
    def __init__(self, total_steps: int = 0, out_dir: str = ""):
        self.total_steps, self.out_dir = total_steps, out_dir
        self.step = 0
        self.phase = "initialize"
        self.metrics: dict[str, float] = {}
        self.weights_version = 0
        self.weights: Mapping[str, torch.Tensor] = {}  # CPU snapshot of the published version
        self.in_flight: Callable[[], list[tuple[int, str, int]]] = list  # (step, state, prompts) ahead of the learner
        self._lock = threading.Lock()
        self._checkpoint_requests: list[Future] = []
        self._stop_requests: list[Future] = []
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    # --- the loop's side ---
    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def publish_weights(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        """A new immutable snapshot; readers holding the old one keep streaming it undisturbed."""
        with self._lock:
            self.weights_version, self.weights = version, state_dict

    def published(self) -> tuple[int, Mapping[str, torch.Tensor]]:
        """(version, weights) of the latest snapshot, read together."""
        with self._lock:
            return self.weights_version, self.weights

    def publish_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        with self._lock:
            self.step, self.metrics = step, dict(metrics)
            watchers = list(self._watchers)
        for loop, queue in watchers:
            loop.call_soon_threadsafe(queue.put_nowait, (step, dict(metrics)))

    def stop_requested(self) -> bool:
        return bool(self._stop_requests)

    def take_requests(self) -> tuple[list[Future], list[Future]]:
        """(checkpoint requests, stop requests) queued since the last call."""
        with self._lock:
            taken = self._checkpoint_requests, self._stop_requests
            self._checkpoint_requests, self._stop_requests = [], []
        return taken

    def finish(self) -> None:
        """The run is over: end every metrics stream, fail requests nobody will serve."""
        self.phase = "done"
        with self._lock:
            watchers, self._watchers = self._watchers, []
            pending = self._checkpoint_requests + self._stop_requests
            self._checkpoint_requests, self._stop_requests = [], []
        for loop, queue in watchers:
            loop.call_soon_threadsafe(queue.put_nowait, None)
        for future in pending:
            if not future.done():
                future.set_exception(RuntimeError("the run ended before the request was served"))

    # --- the control API's side ---
    def request_checkpoint(self) -> Future:
        return self._queue(self._checkpoint_requests)

    def request_stop(self) -> Future:
        """Checkpoint at the end of the current step, then end the run (also what SIGTERM does)."""
        return self._queue(self._stop_requests)

    def _queue(self, requests: list[Future]) -> Future:
        future: Future = Future()
        with self._lock:
            if self.phase == "done":
                future.set_exception(RuntimeError("the run has ended"))
            else:
                requests.append(future)
        return future

    def watch(self) -> asyncio.Queue:
        """A queue of (step, metrics) for each new step, then None when the run ends."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self.phase == "done":
                queue.put_nowait(None)
            else:
                self._watchers.append((asyncio.get_running_loop(), queue))
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._watchers = [(loop, q) for loop, q in self._watchers if q is not queue]
