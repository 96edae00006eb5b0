"""Optional security for every server: a bearer token, TLS, and mTLS with a client CA. Off by default."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from rlhf.core.errors import UserError
from rlhf.core.interceptors import WrappingInterceptor, wrap_handler

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


class BearerTokenInterceptor(WrappingInterceptor):
    """Rejects any RPC except health checks that lacks `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        given = given.encode() if isinstance(given, str) else given
        return handler if hmac.compare_digest(given, self._expected) else wrap_handler(handler, _refused)


@contextlib.asynccontextmanager
async def _refused(request, context: grpc.aio.ServicerContext) -> AsyncIterator:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
    yield request  # pragma: no cover - abort raises
