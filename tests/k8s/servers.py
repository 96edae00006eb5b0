"""Loopback stand-ins for what these tests can't have here: a Kubernetes API server and a running learner.

The API stand-in answers the few REST paths `rlhf k8s` uses with canned JSON and records every request,
so the real kubernetes client does its real serialization and error handling against it.
The learner stand-in is a real gRPC server implementing rlhf.v1.Learner/GetStatus.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc

from rlhf.v1 import learner_pb2, learner_pb2_grpc


def status_body(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def matches(selector: str, item: dict) -> bool:
    """Equality-based label selectors (`a=b,c=d`), the only kind `rlhf k8s` sends."""
    labels = item["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))


class FakeApiServer:
    """routes[(METHOD, path)] = (status, body): body is a dict (sent as JSON) or text.

    Lists are filtered by their request's labelSelector, as the API server does."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, dict | str]] = {}
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qs(url.query),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = outer.routes.get(
                    (self.command, url.path), (404, status_body(404, "NotFound", f"{url.path} not found"))
                )
                selector = parse_qs(url.query).get("labelSelector")
                if selector and isinstance(body, dict) and "items" in body:
                    body = {**body, "items": [i for i in body["items"] if matches(selector[0], i)]}
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def kubeconfig(self, directory: Path) -> Path:
        return write_kubeconfig(directory, self.url)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "test", "user": {"token": "kube-token"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    return path


class FakeLearner(learner_pb2_grpc.LearnerServicer):
    """Answers GetStatus with a fixed status, to callers with the right bearer token."""

    def __init__(self, status: learner_pb2.LearnerStatus, token: str | None = None):
        self.status, self.token = status, token

    def GetStatus(self, request, context):
        if self.token and dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return self.status


def start_learner(servicer: FakeLearner) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    learner_pb2_grpc.add_LearnerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
