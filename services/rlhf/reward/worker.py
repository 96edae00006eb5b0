"""The reward model in processes of its own, so that model code and gRPC code do not share one GIL.

A forward pass gives the GIL back at every torch op and must win it again for the next one; in
the server's process a busy event loop wins many of those races, and the model stalls (the reason
serving engines such as vLLM run the model in a separate process). In a worker process the model
runs at in-process speed while the server's event loop moves messages. The batcher's threads call
`WorkerPool.score_batch` and wait on a pipe, without the GIL.

    pool = WorkerPool("models/rm", device="cpu", dtype="float32", instances=2)  # blocks until loaded
    pool.score_batch([(prompt, response), ...])  # [(reward, truncated), ...]

`instances` > 1 runs that many model copies, each taking a batch at a time (the batcher's
`concurrency`); on CPU they split the cores between them. A worker that dies (OOM killer, a
crashing kernel) fails the batch it held with `WorkerDied`, and a new one takes its place.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
from collections.abc import Sequence

from rlhf.v1 import common_pb2

log = logging.getLogger("rlhf.reward")


class WorkerError(RuntimeError):
    """The worker process failed a batch (it keeps serving)."""


class WorkerDied(WorkerError):
    """The worker process exited; the pool starts a new one."""


class ModelWorker:
    """A RewardScorer in a spawned child process; call it from one thread at a time."""

    def __init__(self, model: str, device: str, dtype: str, threads: int | None = None):
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and gRPC state
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, model, device, dtype, threads), name="reward-model", daemon=True
        )
        self.process.start()
        child.close()
        info, self.model_version, self.device = self._receive()
        self.info = common_pb2.ModelInfo.FromString(info)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def score_batch(self, items: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        try:
            self._conn.send(list(items))
        except OSError as err:
            raise self._died() from err
        return self._receive()

    def _receive(self):
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError) as err:
            raise self._died() from err
        if status == "error":
            raise WorkerError(payload)
        return payload

    def _died(self) -> WorkerDied:
        self.process.join(5)
        return WorkerDied(f"the reward model process exited (code {self.process.exitcode})")

    def close(self, timeout: float = 10.0) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # already gone
                self._conn.send(None)
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()


class WorkerPool:
    """`instances` ModelWorkers; `score_batch` borrows an idle one, so that many threads may call it.

    A worker that dies fails its batch at once (WorkerDied); its slot is refilled by the next batch
    that borrows it, so that batch waits for the model to load. If the new worker cannot start, that
    batch fails with WorkerDied too and the next one tries again.
    """

    def __init__(self, model: str, device: str, dtype: str, instances: int = 1):
        self._spec = (model, device, dtype, cpu_threads_per_instance(device, instances))
        self.workers: list[ModelWorker | None] = []
        try:
            for _ in range(instances):
                self.workers.append(ModelWorker(*self._spec))
        except BaseException:
            self.close()
            raise
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()  # slots of self.workers
        for slot in range(instances):
            self._idle.put(slot)
        first = self.workers[0]
        self.info, self.model_version, self.device = first.info, first.model_version, first.device

    def score_batch(self, items: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        slot = self._idle.get()
        try:
            return self._worker(slot).score_batch(items)
        except WorkerDied:
            self._retire(slot)
            raise
        finally:
            self._idle.put(slot)

    def _worker(self, slot: int) -> ModelWorker:
        """The slot's worker, started again if the last one died."""
        worker = self.workers[slot]
        if worker is None:
            try:
                worker = self.workers[slot] = ModelWorker(*self._spec)
            except (WorkerError, OSError) as err:
                raise WorkerDied(f"the reward model process could not be restarted: {err}") from err
            log.info("reward model process restarted", extra={"pid": worker.pid})
        return worker

    def _retire(self, slot: int) -> None:
        dead = self.workers[slot]
        self.workers[slot] = None
        if dead is not None:
            log.error(
                "reward model process died; the next batch on its slot starts a new one",
                extra={"pid": dead.pid, "exitcode": dead.process.exitcode},
            )
            dead.close()

    def close(self) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.close()


def cpu_threads_per_instance(device: str, instances: int) -> int | None:
    """On CPU, instances share the cores; None leaves torch's default (all cores, or the GPU's case)."""
    if instances == 1 or device.startswith(("cuda", "mps")):
        return None
    return max(1, (os.cpu_count() or 1) // instances)


def _serve(conn, model: str, device: str, dtype: str, threads: int | None) -> None:
    """The child: load the model, then answer batches until told to stop (None) or the parent dies."""
    import torch

    from rlhf.core.resources import die_with_parent
    from rlhf.core.reward_model import RewardScorer

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    if threads:
        torch.set_num_threads(threads)
    try:
        scorer = RewardScorer.load(model, device, dtype)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    scorer.score_batch([("warm", "up")])  # one-off costs (allocator, kernels) before the first request
    conn.send(("ok", (scorer.model_info().SerializeToString(), scorer.model_version, str(scorer.device))))
    while (items := conn.recv()) is not None:
        try:
            conn.send(("ok", scorer.score_batch(items)))
        except Exception as err:  # noqa: BLE001 - one failed batch, not a dead worker
            conn.send(("error", f"{type(err).__name__}: {err}"))
