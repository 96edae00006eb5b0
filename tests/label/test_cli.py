"""`rlhf label` as a command: it serves the page on loopback, and refuses unsafe or incomplete settings in
one line before it binds anything."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error

import pytest

from rlhf.cli import main
from tests.helpers import RLHF, free_port, hang_guard
from tests.label.conftest import PROMPTS, call


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidates", "C", "--host", "0.0.0.0"], "--host 0.0.0.0 is reachable beyond this machine"),
        (["--candidates", "C", "--policy", "127.0.0.1:1"], "give one of --policy"),
        ([], "give one of --policy"),
        (["--policy", "127.0.0.1:1"], "give --prompts FILE"),
        (["--candidates", "C", "--k", "1"], "--k must be at least 2"),
        (["--candidates", "C", "--overlap", "0"], "--overlap must be at least 1"),
    ],
)
def test_refused_settings_are_one_line(tmp_path, candidates, capsys, args, message):
    args = [str(candidates) if a == "C" else a for a in args]
    assert main(["label", "--out", str(tmp_path / "r.jsonl"), *args]) == 2
    assert message in capsys.readouterr().err


def test_out_is_required(candidates, capsys):
    assert main(["label", "--candidates", str(candidates)]) == 2
    assert "give --out FILE" in capsys.readouterr().err


def test_a_token_file_must_name_annotators_with_long_tokens(tmp_path, candidates, capsys):
    tokens = tmp_path / "tokens"
    tokens.write_text("ana short\n")
    args = ["label", "--candidates", str(candidates), "--out", str(tmp_path / "r.jsonl"), "--host", "0.0.0.0"]
    assert main([*args, "--auth-token-file", str(tokens)]) == 2
    assert 'tokens:1: expected "NAME TOKEN" with a token of at least 16 characters' in capsys.readouterr().err


def test_rlhf_label_serves_the_page_and_appends_rankings(tmp_path, candidates):
    out, port = tmp_path / "rankings.jsonl", free_port()
    command = [*RLHF, "label", "--candidates", str(candidates), "--out", str(out), "--port", str(port)]
    proc = subprocess.Popen([*command, "--annotator", "ana"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + hang_guard(600)
        while True:
            try:
                status, item = call(f"{url}/api/next")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.1)
        assert status == 200 and item["prompt"] == PROMPTS[0]
        body = {"item": item["item"], "order": [[1], [0], [2]], "seconds": 4}
        assert call(f"{url}/api/rankings", body)[1]["stored"]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=hang_guard(60))[0].decode()
    assert f"3 prompts (0 fully ranked) -> {out}" in output and f"open {url}/" in output
    assert '"ranking": [1, 0, 2]' in out.read_text()
    assert os.path.getsize(out) == len(out.read_bytes())
