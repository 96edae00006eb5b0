"""A local TCP port that reaches a pod's port through the API server (what `kubectl port-forward` does).

gRPC needs a real address to dial, and the client's port-forward gives a socket object per stream, so
the tunnel listens on 127.0.0.1 and pumps each accepted connection through a fresh port-forward stream.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

# Opens one byte stream to the remote port: something with recv, sendall, shutdown and close.
Opener = Callable[[], Any]


def pod_port_opener(core_api, pod: str, namespace: str, port: int) -> Opener:
    """Streams to `pod:port` through the API server's portforward subresource."""
    from kubernetes.stream import portforward

    def open_stream():
        forward = portforward(core_api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return forward.socket(port)

    return open_stream


class Tunnel:
    """Listens on 127.0.0.1:<free port> while open; `address` is what clients dial."""

    def __init__(self, open_remote: Opener):
        self._open_remote = open_remote
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tunnel-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._closed.set()
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the port listening.
        _quietly(lambda: self._listener.shutdown(socket.SHUT_RDWR))
        self._listener.close()
        with self._lock:
            for stream in self._streams:
                _quietly(stream.close)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            try:
                remote = self._open_remote()
            except Exception:  # noqa: BLE001 - the client sees a dropped connection and retries
                local.close()
                continue
            with self._lock:
                self._streams += [local, remote]
            for source, sink in ((local, remote), (remote, local)):
                threading.Thread(target=_pump, args=(source, sink), name="tunnel-pump", daemon=True).start()


def _pump(source, sink) -> None:
    """Copy bytes until the source ends, then pass the end on (half-close) to the sink."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    _quietly(lambda: sink.shutdown(socket.SHUT_WR))


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):
        action()
