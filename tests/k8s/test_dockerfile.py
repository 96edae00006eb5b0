"""The Dockerfile, read as text (no container engine here): pinned base, stages, user, environment.

Building it is the kind tests' job (tests/e2e, `make e2e-kind`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.k8s.manifests import pod_spec, rendered

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = {"gcc", "g++", "make", "build-essential", "cmake", "git", "curl", "wget", "clang", "python3-dev"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


@pytest.fixture(scope="module")
def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name; '' holds what comes before the first FROM."""
    result: dict[str, list] = {"": []}
    current = ""
    for instruction, args in instructions((REPO / "Dockerfile").read_text()):
        if instruction == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            result[current] = []
        result[current].append((instruction, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_the_base_is_pinned_to_an_exact_release(stages):
    args = dict(a.split("=", 1) for i, a in stages[""] if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert [a for i, a in stages["build"] if i == "FROM"] == ["${PYTHON_IMAGE} AS build"]
    assert [a for i, a in stages["runtime"] if i == "FROM"] == ["${PYTHON_IMAGE} AS runtime"]


def test_the_variant_picks_the_torch_build_pinned_like_the_project(stages):
    build = dict(a.split("=", 1) for i, a in stages["build"] if i == "ARG" and "=" in a)
    assert build["VARIANT"] == "cpu"
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={build['TORCH_VERSION']}" in pins
    install = next(a for i, a in stages["build"] if i == "RUN" and "torch==" in a)
    assert "cpu)" in install and "https://download.pytorch.org/whl/cpu" in install and "cuda)" in install


def test_the_final_stage_runs_rlhf_as_a_non_root_user_without_build_tools(stages):
    runtime = stages["runtime"]
    user = [a for i, a in runtime if i == "USER"]
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0])  # numeric, so runAsNonRoot can check
    runs = " ".join(a for i, a in runtime if i == "RUN")
    installed = set(re.findall(r"apt-get install [^&]*?((?:[\w.+-]+\s*)+)", runs)[0].split()) - {"-y"}
    assert installed == {"--no-install-recommends", "tini"} and not installed & BUILD_TOOLS
    assert "pip install" not in runs  # the venv comes whole from the build stage
    assert ("COPY", "--from=build /opt/rlhf /opt/rlhf") in runtime
    assert [a for i, a in runtime if i == "ENTRYPOINT"] == ['["tini", "--", "rlhf"]']
    env = env_of(runtime)
    assert env["PYTHONUNBUFFERED"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_HOME"].startswith("/tmp/")  # writable under readOnlyRootFilesystem


def test_the_manifests_run_as_the_image_user(stages):
    uid, gid = (int(x) for x in next(a for i, a in stages["runtime"] if i == "USER").split(":"))
    for overlay in ("kind", "kind/jobs", "gpu", "gpu/jobs"):
        for doc in rendered(overlay):
            if doc["kind"] in ("Deployment", "Job"):
                context = pod_spec(doc)["securityContext"]
                assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)


def test_the_build_context_holds_what_the_build_copies():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # everything out, then what the build needs back in
    copied = {"pyproject.toml", "README.md", "services/"}
    assert {line.lstrip("!") for line in ignore if line.startswith("!")} == copied
    assert (REPO / "pyproject.toml").is_file() and (REPO / "services" / "rlhf" / "cli.py").is_file()


def test_the_engine_argument_adds_vllm_to_the_cuda_image_only(stages):
    build = dict(a.split("=", 1) for i, a in stages["build"] if i == "ARG" and "=" in a)
    assert build["ENGINE"] == "hf"
    install = next(a for i, a in stages["build"] if i == "RUN" and "$ENGINE" in a)
    assert 'pip install ".[vllm]"' in install and "ENGINE=vllm needs VARIANT=cuda" in install
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("vllm") for dep in extras["vllm"])
