"""The one server bootstrap every service uses.

A service supplies its servicers and a model loader; this module adds the rest:
grpc.aio with explicit message-size limits and keepalive, grpc.health.v1 (NOT_SERVING until the
model is loaded), server reflection, optional bearer-token auth and TLS/mTLS, a Prometheus
endpoint, structured logs, and graceful shutdown on SIGTERM/SIGINT (stop accepting, finish
in-flight RPCs, exit 0).

    serve(MyService(...), ServerOptions.from_args(args))      # CLI: blocks until SIGTERM
    with ServerThread(MyService(...), options) as port: ...    # tests, demo, learner control API
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rlhf.core.decoding import MalformedRequestInterceptor
from rlhf.core.errors import UserError
from rlhf.core.flags import add_config_arguments, config_from_args, setting
from rlhf.core.metrics import MetricsInterceptor, start_metrics_server
from rlhf.core.security import BearerTokenInterceptor, read_secret, server_credentials

log = logging.getLogger("rlhf.server")

MiB = 1024 * 1024


class Service(Protocol):
    """What a service hands to the bootstrap."""

    name: str  # short name for logs and metrics: "reward", "policy", ...
    service_names: Sequence[str]  # full proto service names, e.g. "rlhf.v1.RewardScoring"

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def load(self) -> None:
        """Load models; the server reports SERVING once this returns."""

    async def close(self) -> None:
        """Release resources after in-flight RPCs have finished."""


SERVER, SECURITY = "server", "security (off by default)"


@dataclass
class ServerOptions:
    """The server settings of every service (`rlhf serve X`) and of the learner's control API; each command
    sets its own --port default."""

    host: str = setting("0.0.0.0", env="RLHF_HOST", group=SERVER)
    """address to bind"""
    port: int = setting(0, group=SERVER)
    """gRPC port (0 picks a free one)"""
    max_message_mb: float = setting(64.0, group=SERVER)
    """largest request or response, in MiB"""
    metrics_port: int | None = setting(None, env="RLHF_METRICS_PORT", group=SERVER)
    """serve Prometheus /metrics on this port (off by default)"""
    health_port: int | None = setting(None, env="RLHF_HEALTH_PORT", group=SERVER)
    """also serve grpc.health.v1, and nothing else, in plaintext on this port: kubelet's gRPC probes cannot
    speak TLS (off by default)"""
    grace_seconds: float = setting(30.0, group=SERVER)
    """how long shutdown waits for in-flight RPCs"""
    auth_token_file: str | None = setting(None, env="RLHF_AUTH_TOKEN_FILE", group=SECURITY)
    """require `authorization: Bearer <token>` on every RPC but health"""
    tls_cert: str | None = setting(None, env="RLHF_TLS_CERT", group=SECURITY)
    """server certificate, PEM"""
    tls_key: str | None = setting(None, env="RLHF_TLS_KEY", group=SECURITY)
    """server private key, PEM"""
    tls_client_ca: str | None = setting(None, env="RLHF_TLS_CLIENT_CA", group=SECURITY)
    """CA that client certificates must chain to: turns on mTLS"""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
        add_config_arguments(parser, ServerOptions)
        parser.set_defaults(port=default_port)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerOptions:
        return config_from_args(args, cls)

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * MiB)


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
    ]


class RunningServer:
    """A started server: its port, and a graceful stop."""

    def __init__(
        self,
        server: grpc.aio.Server,
        service: Service,
        health_servicer,
        port: int,
        grace: float,
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ):
        self.server, self.service, self.health, self.port, self.grace = server, service, health_servicer, port, grace
        self.health_server, self.health_port = health_server, health_port

    async def set_serving(self) -> None:
        for name in ["", *self.service.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """Stop accepting, let in-flight RPCs finish within the grace period, then close the service."""
        log.info("shutting down", extra={"service": self.service.name, "grace_s": self.grace})
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.service.close()
        log.info("stopped", extra={"service": self.service.name})


def check_port_free(host: str, port: int) -> None:
    """UserError `port N is in use` when another process listens there, before gRPC tries (and logs its
    own multi-line complaint). Every address the host resolves to is probed, with SO_REUSEADDR as servers
    bind, so a port whose old connections linger in TIME_WAIT counts as free; an address the probe cannot
    bind for another reason (no IPv6 here, say) is left to gRPC."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} is in use") from None


async def start_server(service: Service, options: ServerOptions) -> RunningServer:
    """Bind and start the server, then load the model; health turns SERVING when loading is done."""
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()]
    token = read_secret(options.auth_token_file)
    if token:
        interceptors.append(BearerTokenInterceptor(token))
    interceptors.append(MalformedRequestInterceptor())  # bytes that do not parse: INVALID_ARGUMENT, not UNKNOWN
    credentials = server_credentials(options.tls_cert, options.tls_key, options.tls_client_ca)

    server = grpc.aio.server(interceptors=interceptors, options=grpc_options(options.max_message_bytes))
    service.add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection([*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{options.host}:{options.port}"
    check_port_free(options.host, options.port)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as err:
        raise UserError(f"cannot listen on {address}: {err}") from err
    await server.start()
    try:
        health_server, health_port = await start_health_server(health_servicer, options)
    except BaseException:
        await server.stop(0)
        raise
    if options.metrics_port is not None:
        metrics_port = start_metrics_server(options.metrics_port)
        log.info("metrics endpoint up", extra={"metrics_port": metrics_port})
    log.info(
        "listening",
        extra={
            "service": service.name,
            "host": options.host,
            "port": port,
            "tls": bool(credentials),
            "auth": bool(token),
            "health_port": health_port,
        },
    )
    running = RunningServer(server, service, health_servicer, port, options.grace_seconds, health_server, health_port)
    try:
        await service.load()
    except BaseException:
        await server.stop(0)
        if health_server is not None:
            await health_server.stop(0)
        raise
    await running.set_serving()
    log.info("serving", extra={"service": service.name, "port": port})
    return running


async def start_health_server(health_servicer, options: ServerOptions) -> tuple[grpc.aio.Server | None, int | None]:
    """With --health-port: a second, plaintext server that carries grpc.health.v1 and nothing else, sharing the
    main server's health states. Kubelet's gRPC probes cannot present a certificate, so with mTLS on the main
    port they probe here; no model RPC is reachable without TLS."""
    if options.health_port is None:
        return None, None
    try:
        check_port_free(options.host, options.health_port)
    except UserError as err:
        raise UserError(f"{err} (--health-port)") from None
    server = grpc.aio.server(interceptors=[MalformedRequestInterceptor()], options=grpc_options(64 * 1024))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(f"{options.host}:{options.health_port}")
    except RuntimeError as err:
        raise UserError(f"cannot listen on {options.host}:{options.health_port} (--health-port): {err}") from err
    await server.start()
    return server, port


async def _serve_until_signalled(service: Service, options: ServerOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_server(service, options)
    await stop.wait()
    await running.stop()


def serve(service: Service, options: ServerOptions) -> int:
    """Run a service until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    asyncio.run(_serve_until_signalled(service, options))
    return 0


class ServerThread:
    """A server on its own event loop in a background thread (tests, benchmarks, the learner's API).

    with ServerThread(service, options) as port:
        ...
    """

    def __init__(self, service: Service, options: ServerOptions):
        self.service, self.options = service, options
        self.port: int | None = None
        self.health_port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._running: RunningServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"{service.name}-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._running = await start_server(self.service, self.options)
            self.port, self.health_port = self._running.port, self._running.health_port
        except BaseException as err:  # noqa: BLE001 - handed to the starting thread
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self._running.stop()

    def start(self, timeout: float = 300) -> int:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.service.name} server did not start within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self.port is not None
        return self.port

    def stop(self, timeout: float = 60) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> int:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
