"""Rendered overlays for the k8s tests: rendered once per session, walked with small helpers."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest

from rlhf.k8s import manifests

ROOT = Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.37.0"  # schemas of a current release, shipped inside kubernetes-validate

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None and shutil.which("kustomize") is None,
    reason="rendering needs `kubectl kustomize` (or kustomize) on PATH",
)


@functools.cache
def rendered(overlay: str, components: tuple[str, ...] = ()) -> tuple[dict, ...]:
    return tuple(manifests.load_documents(manifests.render(ROOT, overlay, components)))


def of_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def main_container(workload: dict) -> dict:
    return pod_spec(workload)["containers"][0]


def validate_strict(doc: dict) -> None:
    """Raises unless the object validates against the release's OpenAPI schemas, unknown fields refused."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
