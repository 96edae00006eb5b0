"""rlhf.v1.Learner: the running learner's control API (status, metrics, checkpoint, stop, weights).

It runs on its own event loop thread (rlhf.core.server.ServerThread) beside the training loop
and reads everything through LearnerControl.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import torch

from rlhf.core.tensors import TensorDecodeError, parse_dtype
from rlhf.core.weights import cast_floating, weight_chunks
from rlhf.learner.control import CheckpointResult, LearnerControl
from rlhf.v1 import common_pb2, learner_pb2, learner_pb2_grpc


class LearnerServicer(learner_pb2_grpc.LearnerServicer):
    def __init__(self, control: LearnerControl):
        self.control = control
        # The latest snapshot cast to each dtype replicas asked for: pods that start together share one copy.
        self._casts: dict[torch.dtype, tuple[int, dict[str, torch.Tensor]]] = {}
        self._casting = asyncio.Lock()

    async def GetStatus(self, request: learner_pb2.GetStatusRequest, context) -> learner_pb2.LearnerStatus:
        c = self.control
        return learner_pb2.LearnerStatus(
            step=c.step,
            weights_version=c.weights_version,
            metrics=c.metrics,
            phase=c.phase,
            total_steps=c.total_steps,
            out_dir=c.out_dir,
            in_flight=[
                learner_pb2.InFlightBatch(step=step, state=state, prompts=prompts)
                for step, state, prompts in c.in_flight()
            ],
        )

    async def WatchMetrics(self, request, context) -> AsyncIterator[learner_pb2.MetricsUpdate]:
        """The latest step's metrics at once (if any), then each new step's until the run ends."""
        queue = self.control.watch()
        try:
            if self.control.step > 0:
                yield learner_pb2.MetricsUpdate(step=self.control.step, metrics=self.control.metrics)
            while (update := await queue.get()) is not None:
                step, metrics = update
                yield learner_pb2.MetricsUpdate(step=step, metrics=metrics)
        finally:
            self.control.unwatch(queue)

    async def SaveCheckpoint(self, request, context) -> learner_pb2.SaveCheckpointResponse:
        result = await self._await(self.control.request_checkpoint(), context)
        return learner_pb2.SaveCheckpointResponse(path=result.path, step=result.step)

    async def Stop(self, request, context) -> learner_pb2.StopResponse:
        result = await self._await(self.control.request_stop(), context)
        return learner_pb2.StopResponse(checkpoint_path=result.path, step=result.step)

    async def GetWeights(self, request, context) -> AsyncIterator[common_pb2.WeightChunk]:
        """The published policy weights; the snapshot is immutable, so training goes on meanwhile."""
        version, weights = self.control.weights_version, self.control.weights
        if not weights:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the learner has not published weights yet")
        if request.dtype:
            try:
                dtype = parse_dtype(request.dtype)
            except TensorDecodeError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"dtype: {err}")
            if not dtype.is_floating_point:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"dtype: {request.dtype} is not a floating-point type"
                )
            weights = await self._cast(version, weights, dtype)
        for chunk in weight_chunks(weights, version):
            yield chunk

    async def _cast(self, version: int, weights: dict[str, torch.Tensor], dtype: torch.dtype):
        async with self._casting:
            cached = self._casts.get(dtype)
            if cached is None or cached[0] != version:
                self._casts[dtype] = (version, await asyncio.to_thread(cast_floating, weights, dtype))
            return self._casts[dtype][1]

    @staticmethod
    async def _await(future, context) -> CheckpointResult:
        """Requests are served between steps: wait for the loop to get there."""
        try:
            return await asyncio.wrap_future(future)
        except RuntimeError as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            raise  # unreachable: abort raises


class LearnerService:
    """The learner's control API, packaged for the shared server bootstrap."""

    name = "learner"
    service_names = (learner_pb2.DESCRIPTOR.services_by_name["Learner"].full_name,)

    def __init__(self, control: LearnerControl):
        self.servicer = LearnerServicer(control)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        learner_pb2_grpc.add_LearnerServicer_to_server(self.servicer, server)

    async def load(self) -> None:
        """Nothing to load: the loop owns the models."""

    async def close(self) -> None:
        """Nothing to release."""
