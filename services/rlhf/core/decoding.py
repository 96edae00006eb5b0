"""Requests that do not parse are the caller's fault: INVALID_ARGUMENT, not UNKNOWN.

gRPC Python answers a request whose bytes fail to deserialize with UNKNOWN ("Unexpected DecodeError")
before any handler runs. `MalformedRequestInterceptor`, installed by the one server bootstrap
(rlhf.core.server), swaps every method's deserializer for one that hands a `Malformed` marker on, and
wraps the method so the marker is answered INVALID_ARGUMENT, naming the message type: for unary
requests before the handler runs, for streamed requests at the message that fails (a weight stream
cut there applies nothing: updates are all or nothing). Each is logged at debug level with its method.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc

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


def _checked_requests(requests: AsyncIterator, context, method: str) -> AsyncIterator:
    async def checked():
        async for request in requests:
            if isinstance(request, Malformed):
                await refuse(context, method, request)
            yield request

    return checked()


def _unary_request(behavior, method: str, streams_out: bool):
    if streams_out and inspect.isasyncgenfunction(behavior):  # else it writes with context.write()

        async def stream_wrapper(request, context):
            if isinstance(request, Malformed):
                await refuse(context, method, request)
            async for item in behavior(request, context):
                yield item

        return stream_wrapper

    async def wrapper(request, context):
        if isinstance(request, Malformed):
            await refuse(context, method, request)
        return await behavior(request, context)

    return wrapper


def _streamed_requests(behavior, method: str, streams_out: bool):
    if streams_out and inspect.isasyncgenfunction(behavior):

        async def stream_wrapper(requests, context):
            async for item in behavior(_checked_requests(requests, context, method), context):
                yield item

        return stream_wrapper

    async def wrapper(requests, context):
        return await behavior(_checked_requests(requests, context, method), context)

    return wrapper


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for every request (or streamed message) that does not parse, on every method."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method, parse = details.method, tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return handler._replace(
                request_deserializer=parse, unary_unary=_unary_request(handler.unary_unary, method, False)
            )
        if handler.unary_stream:
            return handler._replace(
                request_deserializer=parse, unary_stream=_unary_request(handler.unary_stream, method, True)
            )
        if handler.stream_unary:
            return handler._replace(
                request_deserializer=parse, stream_unary=_streamed_requests(handler.stream_unary, method, False)
            )
        return handler._replace(
            request_deserializer=parse, stream_stream=_streamed_requests(handler.stream_stream, method, True)
        )
