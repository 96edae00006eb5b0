"""The kustomize tree under k8s/: find it, render an overlay, and build a training Job from it.

The Jobs that `rlhf k8s submit` creates start from the overlay's rendered Job (k8s/overlays/NAME/jobs),
so the YAML stays the one source of truth; the CLI only swaps in the args its flags describe, and for the
learner the number of pods and processes (`distribute_learner`).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rlhf.core.errors import UserError
from rlhf.core.launch import LAUNCH_FLAGS

STAGES = ("sft", "rm", "ppo")
PART_OF = "app.kubernetes.io/part-of=rlhf"
GPU = "nvidia.com/gpu"
# What a failure does to a learner of several pods (k8s/components/multi-node-learner).
MULTI_NODE_COMPONENT = "multi-node-learner"
# `rlhf train ppo` flags that make it launch torchrun; without them it is one plain process.
LAUNCHER_FLAGS = tuple(flag.removeprefix("--") for flag in LAUNCH_FLAGS)


def find_manifests(explicit: str | None = None) -> Path:
    """The k8s/ dir: --manifests, else $RLHF_K8S_DIR, else the checkout this package runs from, else ./k8s."""
    candidates = (
        [explicit]
        if explicit
        else [
            os.environ.get("RLHF_K8S_DIR"),
            Path(__file__).resolve().parents[3] / "k8s",  # services/rlhf/k8s/ -> repository root
            Path.cwd() / "k8s",
        ]
    )
    for candidate in candidates:
        if candidate and (Path(candidate) / "overlays").is_dir():
            return Path(candidate)
    where = explicit or "the repository"
    raise UserError(f"no k8s manifests (k8s/overlays) found in {where}: run from a checkout or pass --manifests DIR")


def overlays(root: Path) -> list[str]:
    """Overlay names, as paths under k8s/overlays: kind, kind/jobs, gpu, gpu/jobs, ..."""
    base = root / "overlays"
    return sorted(str(p.parent.relative_to(base)) for p in base.rglob("kustomization.yaml"))


def components(root: Path) -> list[str]:
    """Component names, as paths under k8s/components: gpu, mtls, mtls/cert-manager, ..."""
    base = root / "components"
    return sorted(str(p.parent.relative_to(base)) for p in base.rglob("kustomization.yaml"))


def render(root: Path, overlay: str, with_components: Sequence[str] = ()) -> str:
    """The overlay's manifests as multi-document YAML, rendered by `kubectl kustomize` (or `kustomize build`),
    with optional components (k8s/components/NAME) added on top, as if the overlay listed them."""
    known = overlays(root)
    if overlay not in known:
        raise UserError(f"unknown overlay {overlay!r}; choose from: {', '.join(known)}")
    unknown = [c for c in with_components if c not in components(root)]
    if unknown:
        raise UserError(f"unknown component {unknown[0]!r}; choose from: {', '.join(components(root))}")
    if not with_components:
        return _kustomize(root / "overlays" / overlay, overlay)
    with tempfile.TemporaryDirectory(prefix="rlhf-kustomize-") as tmp:
        # kustomize takes only relative paths to other kustomizations: a wrapper that points back at the tree
        wrapper = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(root / "overlays" / overlay, tmp)],
            "components": [os.path.relpath(root / "components" / c, tmp) for c in with_components],
        }
        namespace = yaml.safe_load((root / "overlays" / overlay / "kustomization.yaml").read_text()).get("namespace")
        if namespace:
            wrapper["namespace"] = namespace
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(wrapper))
        return _kustomize(Path(tmp), f"{overlay} + {', '.join(with_components)}")


def _kustomize(path: Path, what: str) -> str:
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(path)]
    else:
        raise UserError("rendering needs kubectl (or kustomize) on PATH")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
        raise UserError(f"{' '.join(command[:2])} {what} failed: {first}")
    return done.stdout


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def job_template(root: Path, overlay: str, stage: str, with_components: Sequence[str] = ()) -> dict[str, Any]:
    """The overlay's Job for a stage (sft, rm or ppo), as rendered from k8s/overlays/OVERLAY/jobs (with the
    components)."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; choose from: {', '.join(STAGES)}")
    jobs_overlay = overlay if overlay.endswith("jobs") else f"{overlay}/jobs"
    for doc in load_documents(render(root, jobs_overlay, with_components)):
        if doc.get("kind") == "Job" and doc["metadata"].get("labels", {}).get("rlhf.io/stage") == stage:
            return doc
    raise UserError(f"overlay {jobs_overlay} has no Job labelled rlhf.io/stage={stage}")


def parse_options(args: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """(leading words, {flag: value}) of a subcommand then options, each `--flag=value`, `--flag value` or a
    bare `--flag` (value None); flags are named without their dashes."""
    words: list[str] = []
    options: dict[str, str | None] = {}
    i = 0
    while i < len(args) and not args[i].startswith("--"):
        words.append(args[i])
        i += 1
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected an option, got {arg!r} in {args}")
        name, sep, value = arg[2:].partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, sep, i = args[i + 1], "=", i + 1
        options[name] = value if sep else None
        i += 1
    return words, options


def merge_args(args: list[str], overrides: dict[str, Any], extra: list[str] | None = None) -> list[str]:
    """Replace or add `--flag=value` options in a command line (`parse_options` says what it may hold).

    An override of True writes a bare `--flag`, False removes the flag, None leaves it alone.
    `extra` words go last, unparsed, for flags this CLI doesn't know by name.
    """
    words, options = parse_options(args)
    for name, value in overrides.items():
        flag = name.replace("_", "-")
        if value is None:
            continue
        if value is False:
            options.pop(flag, None)
        else:
            options[flag] = None if value is True else str(value)
    merged = words + [f"--{k}" if v is None else f"--{k}={v}" for k, v in options.items()]
    return merged + list(extra or [])


def learner_world(job: dict[str, Any]) -> tuple[int, int]:
    """(pods, processes per pod) of a rendered ppo Job: its completions and its --nproc-per-node."""
    _, options = parse_options(job["spec"]["template"]["spec"]["containers"][0].get("args") or [])
    return job["spec"].get("completions") or 1, int(options.get("nproc-per-node") or 1)


def distribute_learner(
    job: dict[str, Any], nodes: int | None = None, per_node: int | None = None, name: str | None = None
) -> dict[str, Any]:
    """The ppo Job as `nodes` pods of `per_node` processes each (None: as the Job has it), named `name`.

    One process in all is the plain learner, without launcher flags; one pod of G processes adds
    `--nproc-per-node G` (torchrun on its own, no rendezvous to find). Several pods each run `rlhf train ppo
    --nnodes N --nproc-per-node G --rdzv-endpoint NAME-0.SUBDOMAIN:PORT --rdzv-id NAME`: pod 0 of an Indexed Job
    is named NAME-0, and its torchrun hosts the rendezvous on the container port named rdzv. A pod that asks
    for GPUs asks for one per process.
    """
    job = copy.deepcopy(job)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    had_nodes, had_per_node = learner_world(job)
    nodes = had_nodes if nodes is None else nodes
    per_node = had_per_node if per_node is None else per_node
    name = name or job["metadata"]["name"]
    if nodes < 1 or per_node < 1:
        raise UserError(f"a learner needs at least one pod and one process per pod, not {nodes} x {per_node}")
    spec["completions"] = spec["parallelism"] = nodes
    launcher: dict[str, Any] = dict.fromkeys(LAUNCHER_FLAGS, False)
    if per_node > 1:
        launcher["nproc-per-node"] = per_node
    if nodes > 1:
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "rdzv")
        launcher = {
            "nnodes": nodes,
            "nproc-per-node": per_node,
            "rdzv-endpoint": f"{name}-0.{pod['subdomain']}:{port}",
            "rdzv-id": name,
        }
    container["args"] = merge_args(container["args"], launcher)
    for kind in ("requests", "limits"):
        if GPU in container.get("resources", {}).get(kind, {}):
            container["resources"][kind][GPU] = str(per_node)
    return job


def build_job(
    template: dict[str, Any],
    overrides: dict[str, Any],
    *,
    name: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    extra: list[str] | None = None,
):
    """A kubernetes.client V1Job from a rendered Job, with its args, name, namespace and image replaced."""
    from kubernetes import client

    job = client.V1Job.from_dict(template)
    container = job.spec.template.spec.containers[0]
    container.args = merge_args(container.args or [], overrides, extra)
    if image:
        container.image = image
    if name:
        job.metadata.name = name
    if namespace:
        job.metadata.namespace = namespace
    return job


def job_to_dict(job) -> dict[str, Any]:
    """The Job as the API server receives it (camelCase keys, no unset fields)."""
    from kubernetes import client

    return client.ApiClient().sanitize_for_serialization(job)
