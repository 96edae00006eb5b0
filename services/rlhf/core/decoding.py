"""Requests that do not parse are the caller's fault: INVALID_ARGUMENT, not UNKNOWN.

gRPC Python answers a request whose bytes fail to deserialize with UNKNOWN ("Unexpected DecodeError")
before any handler runs. `MalformedRequestInterceptor`, installed by the one server bootstrap
(rlhf.core.server), swaps every method's deserializer for one that hands a `Malformed` marker on, and
wraps the method so the marker is answered INVALID_ARGUMENT, naming the message type: for unary
requests before the handler runs, for streamed requests at the message that fails (a weight stream
cut there applies nothing: updates are all or nothing). Each is logged at debug level with its method.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from rlhf.core.interceptors import WrappingInterceptor, wrap_handler

log = logging.getLogger("rlhf.server")


@dataclass(frozen=True)
class Malformed:
    """What a request's bytes became when they did not parse."""

    error: str


def tolerant(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """The deserializer, returning Malformed instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> object:
        try:
            return deserializer(data)
        except Exception as err:  # noqa: BLE001 - DecodeError, or whatever a bad payload makes it raise
            return Malformed(f"{type(err).__name__}: {err}")

    return parse


async def refuse(context: grpc.aio.ServicerContext, method: str, bad: Malformed) -> None:
    log.debug("malformed request", extra={"method": method, "error": bad.error})
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid protobuf message ({bad.error})"
    )


async def _checked_requests(requests: AsyncIterator, context, method: str) -> AsyncIterator:
    async for request in requests:
        if isinstance(request, Malformed):
            await refuse(context, method, request)
        yield request


@contextlib.asynccontextmanager
async def _checked_request(method: str, request, context) -> AsyncIterator:
    if isinstance(request, Malformed):
        await refuse(context, method, request)
    yield request


@contextlib.asynccontextmanager
async def _checked_stream(method: str, requests: AsyncIterator, context) -> AsyncIterator:
    yield _checked_requests(requests, context, method)


class MalformedRequestInterceptor(WrappingInterceptor):
    """INVALID_ARGUMENT for every request (or streamed message) that does not parse, on every method."""

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        check = _checked_stream if handler.request_streaming else _checked_request
        return wrap_handler(
            handler,
            functools.partial(check, details.method),
            request_deserializer=tolerant(handler.request_deserializer),
        )
