"""Reward fixtures: a saved (untrained) reward-model dir, and self-signed TLS material."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny LM with a randomly initialised (seeded) one-output head, saved: fast, and deterministic to load."""
    import torch

    from rlhf.core.modeling import load_tokenizer
    from rlhf.reward.model import load_sequence_classifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_sequence_classifier(tiny_model_dir, tokenizer, torch.device("cpu"), torch.float32)
    out = tmp_path_factory.mktemp("models") / "rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(cwd: Path, name: str, ca: str, subject: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={subject}",
             "-out", f"{name}.csr", cwd=cwd)
    extra = ["-extfile", f"{name}.ext"] if san else []
    if san:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", *extra, cwd=cwd)


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    """Two CAs; a server cert for localhost/127.0.0.1 and a client cert from `ca`, a client cert from `other-ca`."""
    cwd = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN={ca}", cwd=cwd)
    _signed(cwd, "server", "ca", "localhost", san="DNS:localhost,IP:127.0.0.1")
    _signed(cwd, "client", "ca", "client")
    _signed(cwd, "stranger", "other-ca", "stranger")
    return cwd
