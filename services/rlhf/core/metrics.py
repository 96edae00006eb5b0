"""Prometheus metrics shared by every service, and the interceptor that records RPC outcomes.

Metrics are module-level (one registry per process); the `service` label tells servers apart.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Counter, Histogram, start_http_server

from rlhf.core.interceptors import WrappingInterceptor, wrap_handler

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_REQUESTS = Counter("rlhf_rpc_requests", "RPCs handled, by method and status code", ["method", "code"])
RPC_LATENCY = Histogram("rlhf_rpc_latency_seconds", "RPC handling time", ["method"], buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram(
    "rlhf_batch_size", "Items per model batch", ["service"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
QUEUE_DELAY = Histogram(
    "rlhf_queue_delay_seconds", "Time an item waits before its batch starts", ["service"], buckets=_LATENCY_BUCKETS
)
BATCH_SECONDS = Histogram("rlhf_batch_seconds", "Model time per batch", ["service"], buckets=_LATENCY_BUCKETS)
PADDING_FRACTION = Histogram(
    "rlhf_padding_fraction", "Share of padded positions per batch", ["service"], buckets=(0, 0.05, 0.1, 0.2, 0.4, 0.8)
)
TRUNCATED_INPUTS = Counter("rlhf_truncated_inputs", "Inputs cut to fit the model context", ["service"])


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_port


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    return "UNKNOWN" if not isinstance(error, grpc.aio.AbortError) else "ABORTED"


class MetricsInterceptor(WrappingInterceptor):
    """Counts every RPC by method and final status code, and times it."""

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return wrap_handler(handler, functools.partial(_timed, details.method))


@contextlib.asynccontextmanager
async def _timed(method: str, request, context: grpc.aio.ServicerContext) -> AsyncIterator:
    start, error = time.perf_counter(), None
    try:
        yield request
    except BaseException as err:
        error = err
        raise
    finally:
        RPC_LATENCY.labels(method).observe(time.perf_counter() - start)
        RPC_REQUESTS.labels(method, _code_of(context, error)).inc()
