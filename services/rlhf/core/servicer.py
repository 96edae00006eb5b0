"""What the policy, reference and reward services share: the loading gate, batching, and errors as statuses.

The server's port opens before the model has loaded (rlhf.core.server), so until `serve_batched` runs
every RPC answers UNAVAILABLE, which clients retry. A request's items are checked (`checked`), then
merged with other requests' on one DynamicBatcher built from the service's batching settings
(`batched`). Failures become statuses here, once, so the three services answer alike:

    InvalidRequest                  INVALID_ARGUMENT
    QueueFull                       RESOURCE_EXHAUSTED   admission control (--max-queue); clients back off
    BatcherClosed, `retryable`      UNAVAILABLE          shutting down, a model process restarting; clients retry
    StatusError                     its own code
    any other error                 INTERNAL             the server's fault, never the caller's
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

import grpc

from rlhf.core.batching import BatcherClosed, DynamicBatcher, QueueFull
from rlhf.core.checks import InvalidRequest
from rlhf.core.errors import StatusError
from rlhf.v1 import common_pb2

log = logging.getLogger("rlhf.server")

ConfigT = TypeVar("ConfigT", bound="BatchingSettings")
ModelT = TypeVar("ModelT")
In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")


class BatchingSettings(Protocol):
    """The settings a batched service's config holds (defined, with their checks, in the configs)."""

    max_batch_size: int
    max_wait_ms: float
    max_items_per_request: int
    max_queue: int


class ModelServicer(Generic[ConfigT, ModelT, In, Out]):
    """The shared half of a model servicer, and the bootstrap hooks of rlhf.core.server.Service but
    `add_to_server` and `load` (which ends with `serve_batched`)."""

    name: ClassVar[str]  # "policy", "reference", "reward": in messages, logs and metrics
    service_names: ClassVar[tuple[str, ...]]
    retryable: ClassVar[tuple[type[Exception], ...]] = ()  # model failures a retry gets past: UNAVAILABLE

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self.model: ModelT | None = None
        self.batcher: DynamicBatcher[In, Out] | None = None

    def serve_batched(
        self,
        model: ModelT,
        process: Callable[[list[In]], Sequence[Out]],
        *,
        length_of: Callable[[In], int],
        group_of: Callable[[In], Hashable] = lambda _: None,
        concurrency: int = 1,
    ) -> None:
        """Start answering RPCs with `model`: batches of items, cut by the config's settings, go to `process`."""
        c = self.config
        self.batcher = DynamicBatcher(
            process,
            name=self.name,
            max_batch_size=c.max_batch_size,
            max_wait_ms=c.max_wait_ms,
            length_of=length_of,
            group_of=group_of,
            concurrency=concurrency,
            max_queue=c.max_queue,
        )
        self.model = model  # last: until now every RPC answers UNAVAILABLE

    async def close(self) -> None:
        """Finish the queued work (the server has stopped taking RPCs)."""
        if self.batcher is not None:
            await self.batcher.close()

    async def loaded(self, context: grpc.aio.ServicerContext) -> ModelT:
        """The model, or UNAVAILABLE while it loads."""
        if self.model is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the {self.name} model is still loading")
        return self.model

    async def checked(self, context: grpc.aio.ServicerContext, check: Callable[[], T]) -> T:
        """check()'s result, or INVALID_ARGUMENT with its InvalidRequest's message."""
        try:
            return check()
        except InvalidRequest as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    async def batched(self, context: grpc.aio.ServicerContext, items: Sequence[In]) -> list[Out]:
        """The outputs for `items` from the shared batches, or the status their failure maps to."""
        try:
            return await self.batcher.submit(items)
        except QueueFull as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except (BatcherClosed, *self.retryable) as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{err}; retry")
        except StatusError as err:
            log.warning("request failed", extra={"service": self.name, "code": err.code.name, "error": str(err)})
            await context.abort(err.code, str(err))
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, never the server
            log.exception("batch failed", extra={"service": self.name})
            await context.abort(grpc.StatusCode.INTERNAL, f"the {self.name} model failed: {type(err).__name__}: {err}")

    def describe(self, model: ModelT) -> common_pb2.ModelInfo:
        """What the loaded model says about itself: a ModelInfo without the batching settings."""
        raise NotImplementedError

    async def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ModelInfo:
        info = common_pb2.ModelInfo()
        info.CopyFrom(self.describe(await self.loaded(context)))
        info.max_batch_size = self.config.max_batch_size
        info.max_items_per_request = self.config.max_items_per_request
        return info
