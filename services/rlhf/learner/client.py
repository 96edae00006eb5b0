"""Python client for a running learner (rlhf.v1.Learner), used by `rlhf learner status|watch|stop`."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rlhf.core.client import BaseClient
from rlhf.core.weights import assemble
from rlhf.v1 import learner_pb2, learner_pb2_grpc


class LearnerClient(BaseClient):
    SERVICE = "rlhf.v1.Learner"

    def __init__(self, target: str, options=None, **overrides):
        super().__init__(target, options, **overrides)
        self.stub = learner_pb2_grpc.LearnerStub(self.channel)

    def status(self) -> learner_pb2.LearnerStatus:
        return self.stub.GetStatus(learner_pb2.GetStatusRequest(), **self.call_kwargs())

    def watch(self) -> Iterator[learner_pb2.MetricsUpdate]:
        """Each step's metrics as it finishes, until the run ends (no deadline: it runs as long as training)."""
        yield from self.stub.WatchMetrics(learner_pb2.WatchMetricsRequest(), metadata=self.metadata)

    def save_checkpoint(self, timeout: float | None = None) -> learner_pb2.SaveCheckpointResponse:
        """Waits for the end of the current step, when the checkpoint is written."""
        return self.stub.SaveCheckpoint(learner_pb2.SaveCheckpointRequest(), **self.call_kwargs(timeout))

    def stop(self, timeout: float | None = None) -> learner_pb2.StopResponse:
        """Checkpoint at the end of the current step, then the run ends."""
        return self.stub.Stop(learner_pb2.StopRequest(), **self.call_kwargs(timeout))

    def get_weights(self, dtype: str = "") -> tuple[int, dict[str, torch.Tensor]]:
        """(version, state dict) of the learner's current policy; floating-point tensors in `dtype`
        ("bfloat16", ...) when given, else as the learner trains them."""
        request = learner_pb2.GetWeightsRequest(dtype=dtype)
        return assemble(self.stub.GetWeights(request, **self.call_kwargs()))
