"""The one way the server's interceptors (metrics, auth, malformed requests) wrap a method.

A grpc.RpcMethodHandler holds its behavior under one of four names (unary_unary, unary_stream,
stream_unary, stream_stream), and a behavior that streams its responses is an async generator or a
coroutine that writes with context.write(). `wrap_handler` covers every case once; an interceptor
supplies only a scope: an async context manager entered around each call, which may abort it, hand
the behavior another request (or request iterator), or see how the call ended.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
Scope = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[Any]]


def wrap_handler(handler: grpc.RpcMethodHandler, scope: Scope, **fields: Any) -> grpc.RpcMethodHandler:
    """The handler with its behavior run inside `scope(request, context)`, which yields the request the
    behavior gets; `fields` replaces other fields of the handler (e.g. its request_deserializer)."""
    streams_in, streams_out = handler.request_streaming, handler.response_streaming
    kind = f"{'stream' if streams_in else 'unary'}_{'stream' if streams_out else 'unary'}"
    return handler._replace(**{kind: scoped(getattr(handler, kind), scope)}, **fields)


def scoped(behavior: Behavior, scope: Scope) -> Behavior:
    """`behavior` run inside `scope`, of the same kind: an async generator stays one."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context):
            async with scope(request, context) as request:
                async for item in behavior(request, context):
                    yield item

        return stream

    async def call(request, context):
        async with scope(request, context) as request:
            return await behavior(request, context)

    return call


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that hands each method's handler (None for an unknown method) to `wrap`."""

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        return None if handler is None else self.wrap(handler, details)
