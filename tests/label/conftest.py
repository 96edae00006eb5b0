"""The labelling app on a real loopback HTTP server (uvicorn in a thread), and a small JSON client for it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlhf.label.config import LabelConfig

PROMPTS = [
    "Human: Describe cats.\nAssistant:",
    "Human: Tell me about rivers.\nAssistant:",
    "Human: Say hi.\nAssistant:",
]
RESPONSES = [
    [" cats are kind.", " cats are dull.", " <script>alert(1)</script> cats & <b>dogs</b>"],
    [" rivers are calm.", " roads are cold.", " rivers are gloomy."],
    [" hi.", " hello there.", " go away."],
]


def write_candidates(path: Path, prompts=PROMPTS, responses=RESPONSES) -> Path:
    path.write_text(
        "".join(json.dumps({"prompt": p, "responses": r}) + "\n" for p, r in zip(prompts, responses, strict=True))
    )
    return path


@contextmanager
def label_server(config: LabelConfig, tokens: dict[str, str] | None = None, sample=None):
    """`rlhf label`'s app for `config` served on 127.0.0.1 (a free port); yields its base URL."""
    import uvicorn

    from rlhf.label.app import build_app
    from rlhf.label.items import ItemQueue, load_items
    from rlhf.label.store import RankingStore
    from tests.helpers import free_port, hang_guard

    store = RankingStore(config.out)
    queue = ItemQueue(load_items(config), store, config.overlap, sample)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(config, queue, store, tokens or {}), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + hang_guard(600)
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the label server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def call(url: str, body=None, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON reply) of a GET, or of a POST when `body` (JSON) or `raw` (bytes) is given."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def candidates(tmp_path) -> Path:
    return write_candidates(tmp_path / "candidates.jsonl")
