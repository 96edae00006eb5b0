"""Client side of every service: channels with deadlines, retries on UNAVAILABLE, auth and TLS.

Retries and load balancing use gRPC's own service config (retryPolicy, round_robin), so a
client pointed at `dns:///policy.ns.svc:50052` spreads calls over every replica the name resolves to.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf.core.errors import UserError
from rlhf.core.flags import add_config_arguments, config_from_args, setting
from rlhf.core.security import read_secret

# The codes on which the same call may succeed when sent again: the server is down or still starting
# (UNAVAILABLE), or its admission control (--max-queue) refused the call for now (RESOURCE_EXHAUSTED). The one
# list: every channel's retry policy below, and the learner's own retries (rlhf.learner.retries), which add to it.
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _service_config(max_attempts: int) -> str:
    # gRPC rejects a retryPolicy with maxAttempts < 2 (and then no channel works): 1 means no policy.
    retry = (
        {
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": [code.name for code in RETRYABLE_CODES],
            }
        }
        if max_attempts >= 2
        else {}
    )
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": [{}], **retry}],  # every method of every service
        }
    )


@dataclass(kw_only=True)
class ClientTLS:
    """A client's TLS files: the CA it trusts and, for servers that require mTLS, its own certificate and key.
    Every command that calls a service takes them (`rlhf serve policy` and the learner with a prefix)."""

    tls_ca: str | None = setting(None, env="RLHF_TLS_CA")
    """CA certificate that signed the server's: connect with TLS"""
    tls_cert: str | None = setting(None, env="RLHF_TLS_CLIENT_CERT")
    """client certificate, PEM, for a server that requires mTLS (with the key)"""
    tls_key: str | None = setting(None, env="RLHF_TLS_CLIENT_KEY")
    """client private key, PEM, for the client certificate"""

    def check_tls_pair(self, prefix: str = "") -> None:
        """UserError unless the client certificate and key come together (`prefix`: the flags' prefix)."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UserError(f"--{prefix}tls-cert and --{prefix}tls-key go together")


@dataclass
class ClientOptions(ClientTLS):
    timeout: float = 60.0
    """deadline per call in seconds"""
    max_attempts: int = setting(5, cli=False)  # gRPC caps retries at 5 attempts
    max_message_mb: float = setting(64.0, cli=False)
    auth_token_file: str | None = setting(None, env="RLHF_AUTH_TOKEN_FILE")
    """send the bearer token in this file"""
    auth_token: str | None = setting(None, cli=False)  # the token itself (default: read from auth_token_file)
    tls_server_name: str | None = None
    """expected server name in its certificate (default: the target's host)"""

    def __post_init__(self) -> None:
        if self.auth_token is None and self.auth_token_file:
            self.auth_token = read_secret(self.auth_token_file)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_arguments(parser.add_argument_group("connection"), ClientOptions)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientOptions:
        return config_from_args(args, cls)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err


def make_channel(target: str, options: ClientOptions | None = None) -> grpc.Channel:
    options = options or ClientOptions()
    size = int(options.max_message_mb * 1024 * 1024)
    channel_args = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _service_config(options.max_attempts)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if options.tls_server_name:
        channel_args.append(("grpc.ssl_target_name_override", options.tls_server_name))
    if options.tls_ca or options.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(options.tls_ca),
            private_key=_read(options.tls_key),
            certificate_chain=_read(options.tls_cert),
        )
        return grpc.secure_channel(target, credentials, options=channel_args)
    return grpc.insecure_channel(target, options=channel_args)


class ServiceError(grpc.RpcError):
    """What every project client raises for a failed call: the target, the method and the gRPC status.

    A grpc.RpcError, so `except grpc.RpcError` and `err.code()` keep working; str() is one line."""

    def __init__(self, target: str, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{target} ({method}): {code.name}: {details}")
        self.target, self.method, self.status, self.message = target, method, code, details

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.target, self.method, self.status, self.message)


def _raising_service_errors(method: Callable) -> Callable:
    """Wrap a client method (or generator method) so that a grpc.RpcError leaves it as a ServiceError."""

    def convert(client: BaseClient, err: grpc.RpcError) -> ServiceError:
        if isinstance(err, ServiceError):  # from a method this one called: name the one the caller used
            return ServiceError(err.target, method.__name__, err.status, err.message)
        details = err.details() or ""
        if err.code() == grpc.StatusCode.UNIMPLEMENTED and client.SERVICE:
            details = wrong_service(client, client.SERVICE) or details
        return ServiceError(client.target, method.__name__, err.code(), details)

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except grpc.RpcError as err:
                raise convert(self, err) from None

        return streaming

    @functools.wraps(method)
    def unary(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except grpc.RpcError as err:
            raise convert(self, err) from None

    return unary


class BaseClient:
    """Owns a channel; subclasses wrap one service's stub. Usable as a context manager.

    Every public method a subclass defines raises ServiceError (never a raw grpc.RpcError), and an
    UNIMPLEMENTED answer says which service the target serves instead of SERVICE."""

    SERVICE = ""  # the full gRPC service name, e.g. "rlhf.v1.PolicyInference"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(value):
                setattr(cls, name, _raising_service_errors(value))

    def __init__(self, target: str, options: ClientOptions | None = None, **overrides):
        self.options = options or ClientOptions(**overrides)
        self.target = target
        self.channel = make_channel(target, self.options)
        self.metadata = (("authorization", f"Bearer {self.options.auth_token}"),) if self.options.auth_token else ()

    def call_kwargs(self, timeout: float | None = None) -> dict:
        return {"timeout": timeout or self.options.timeout, "metadata": self.metadata}

    def wait_until_serving(self, timeout: float = 120.0, service: str = "", abort=lambda: False) -> None:
        wait_until_serving(self.channel, timeout, service, abort)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until_serving(channel: grpc.Channel, timeout: float = 120.0, service: str = "", abort=lambda: False) -> None:
    """Poll grpc.health.v1 until it answers SERVING; raises TimeoutError otherwise, or as soon as
    abort() is true (a stop request must not wait out the timeout)."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline and not abort():
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=max(0.05, min(1.0, deadline - time.monotonic()))
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            last = err.code().name
        time.sleep(0.1)
    if abort():
        raise TimeoutError(f"stop requested while waiting for SERVING (last: {last})")
    raise TimeoutError(f"not SERVING after {timeout:.0f}s (last: {last})")


def describe_rpc_error(err: grpc.RpcError) -> str:
    """One line for the CLI: `HOST:PORT (Method): UNAVAILABLE: failed to connect ...`."""
    if isinstance(err, ServiceError):
        return str(err)
    return f"{err.code().name}: {err.details()}"


def split_target(target: str) -> tuple[str, int]:
    """("host", port) of `host:port`, `[v6]:port` or `dns:///host:port`."""
    address = target.removeprefix("dns:///").removeprefix("dns:")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"target {target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def resolve_replicas(target: str) -> list[str]:
    """One `ip:port` target per address that a name resolves to, e.g. every pod behind a headless Service;
    [] when the name cannot be resolved (now).

    Calls to a replica set go through one client per replica where each one must be reached (weight
    pushes), rather than a round_robin channel that picks one. IPv4 addresses are preferred over IPv6
    ones, so a dual-stack pod or `localhost` (127.0.0.1 and ::1) counts once.
    """
    host, port = split_target(target)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    v4 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET})
    v6 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET6})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in (v4 or v6)]


REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def served_services(client: BaseClient, timeout: float = 5.0) -> list[str] | None:
    """The gRPC services a server lists through reflection, or None if it does not say. A server that
    refuses the client's credentials raises ServiceError (UNAUTHENTICATED, PERMISSION_DENIED)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        for reply in stub.ServerReflectionInfo(iter([request]), timeout=timeout, metadata=client.metadata):
            return [s.name for s in reply.list_services_response.service]
    except grpc.RpcError as err:
        if err.code() in REFUSED:
            raise ServiceError(client.target, "ServerReflectionInfo", err.code(), err.details() or "") from None
        return None
    return None


def wrong_service(client: BaseClient, expected: str, timeout: float = 5.0) -> str | None:
    """`HOST:PORT serves rlhf.v1.RewardScoring, not rlhf.v1.PolicyInference` when the server behind
    the client lists other services than `expected`; None when it serves it, or cannot tell."""
    names = served_services(client, timeout)
    if names is None or expected in names:
        return None
    ours = [n for n in names if not n.startswith("grpc.")] or names
    return f"{client.target} serves {', '.join(ours) or 'no service'}, not {expected}"


def wait_until_connected(client: BaseClient, timeout: float, abort=lambda: False) -> bool:
    """Wait until the client's channel connects (a TCP connection, and TLS if set); False after timeout
    or once abort() is true. It is checked every 0.1 s, so a stop request ends the wait at once."""
    ready = grpc.channel_ready_future(client.channel)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not abort():
            try:
                ready.result(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                return True
            except grpc.FutureTimeoutError:
                continue
        return False
    finally:
        ready.cancel()
