"""The policy service under each engine, for its contract tests.

hf runs in this process. vllm runs as `rlhf serve policy --engine vllm`, a separate process from vLLM's own
environment (it pins its own transformers), as it would in its own pod: .venv-vllm at the repository root
(`make test` builds it) or $RLHF_VLLM_PYTHON. The tests drive both through the real gRPC API. Without that
environment the vllm cases skip, saying why.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.policy.client import PolicyClient
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from tests.helpers import CliServer, free_port

REPO = Path(__file__).resolve().parents[1]
# Small and quick to start on a CPU: no compilation, a 64 MiB KV cache.
VLLM_FLAGS = ["--engine", "vllm", "--vllm-enforce-eager", "--vllm-kv-cache-gb", "0.0625"]


def vllm_python() -> str | None:
    """The vLLM environment's python, if there is one."""
    path = Path(os.environ.get("RLHF_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
    return str(path) if path.exists() else None


NO_VLLM = "no vLLM environment: `make test` builds .venv-vllm (or set RLHF_VLLM_PYTHON to one)"
needs_vllm = pytest.mark.skipif(vllm_python() is None, reason=NO_VLLM)
ENGINES = ["hf", pytest.param("vllm", marks=needs_vllm)]


@dataclass
class Served:
    """A running policy service: its address, and its Prometheus metrics."""

    target: str
    metrics_url: str | None = None  # None: the service runs in this process (prometheus_client.REGISTRY)

    def metric(self, name: str, labels: dict[str, str]) -> float:
        if self.metrics_url is None:
            return REGISTRY.get_sample_value(name, labels) or 0.0
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


def flags_of(config: dict) -> list[str]:
    """PolicyServiceConfig fields as `rlhf serve policy` flags."""
    return [arg for name, value in config.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


@contextlib.contextmanager
def served_policy(engine: str, model_dir, log_path: Path | None = None, **config) -> Iterator[Served]:
    """The policy service on `model_dir` with `config` (PolicyServiceConfig fields), until the block ends."""
    if engine == "hf":
        service = PolicyService(PolicyServiceConfig(model=str(model_dir), device="cpu", **config))
        with ServerThread(service, ServerOptions(port=0)) as port:
            yield Served(f"127.0.0.1:{port}")
        return
    metrics_port = free_port()
    args = ["serve", "policy", "--model", str(model_dir), "--device", "cpu", *VLLM_FLAGS, *flags_of(config)]
    with CliServer([*args, "--metrics-port", str(metrics_port)], log_path=log_path, **vllm_process()) as server:
        yield Served(server.target, f"http://127.0.0.1:{metrics_port}/metrics")


def vllm_process() -> dict:
    """A ServiceProcess's options for `rlhf serve policy ... VLLM_FLAGS`: the vLLM environment's python, and time
    for vLLM's import and start (30 s on an idle 2-core machine, minutes on a busy one)."""
    return {"command": [vllm_python(), "-m", "rlhf.cli"], "start_timeout": 900.0}


def model_dir_weights(model_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


def with_model_dir_weights(served: Served, model_dir) -> Served:
    """`served` back on its model dir's weights as version 0, for a test that needs a fresh replica: a shared
    vLLM process stands in for a new one (each start costs a minute or more on a CPU)."""
    with PolicyClient(served.target) as policy:
        policy.update_weights(model_dir_weights(model_dir), version=0)
    return served


@contextlib.contextmanager
def fresh_policy(request: pytest.FixtureRequest, engine: str, model_dir, **config) -> Iterator[Served]:
    """A policy service on the model dir's weights as version 0: hf, a new one with `config`; vllm, the
    session's process (the `vllm_policy` fixture, its own config) with the model dir's weights pushed back."""
    if engine == "vllm":
        yield with_model_dir_weights(request.getfixturevalue("vllm_policy"), model_dir)
        return
    with served_policy(engine, model_dir, **config) as served:
        yield served
