"""Optional security for every server: a bearer token, TLS, and mTLS with a client CA. Off by default."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from rlhf.core.errors import UserError

# Health checks stay open so that probes and load balancers need no secret.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def read_secret(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise UserError(f"cannot read auth token file {path}: {err.strerror}") from err
    if not token:
        raise UserError(f"auth token file {path} is empty")
    return token


def server_credentials(cert: str | None, key: str | None, client_ca: str | None) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plaintext. A client CA turns on mTLS (client certificates required)."""
    if not cert and not key:
        if client_ca:
            raise UserError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise UserError("TLS needs both --tls-cert and --tls-key")
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        ca = Path(client_ca).read_bytes() if client_ca else None
    except OSError as err:
        raise UserError(f"cannot read TLS file {err.filename}: {err.strerror}") from err
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects any RPC except health checks that lacks `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None

    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    async def refuse_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return handler._replace(unary_unary=refuse)
    if handler.stream_unary:
        return handler._replace(stream_unary=refuse)
    if handler.unary_stream:
        return handler._replace(unary_stream=refuse_stream)
    return handler._replace(stream_stream=refuse_stream)
