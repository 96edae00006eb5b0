"""The kind overlay on a real local cluster: `make e2e-kind` (needs kind, kubectl and Docker or Podman).

    1. create a kind cluster;  2. build the image and `kind load` it;
    3. apply k8s/overlays/kind and wait for the setup Job and the rollouts;
    4. score through a port-forward with the Python client;
    5. run a short ppo Job to completion, check its logs and checkpoint: the kind overlay's learner is 2 pods
       of 1 process (torchrun over gloo, meeting at ppo-0.ppo-rdzv), so both ranks must have written it;
    6. delete a ppo Job mid-run (both pods checkpoint together), create it again, check that it resumed;
    7. delete the cluster (RLHF_E2E_KEEP=1 keeps it for a look around).

Skipped, with the reason, where kind or a container engine is missing. Takes 10-20 minutes, most of it
the image build. RLHF_E2E_CLUSTER names the cluster (default rlhf-e2e); an existing one is reused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e_kind, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("RLHF_E2E_CLUSTER", "rlhf-e2e")
ENGINE = os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "docker")  # kind's own switch: docker, podman, nerdctl
IMAGE = "rlhf:dev"  # what k8s/overlays/kind runs
NAMESPACE = "rlhf"


def missing_tools() -> str | None:
    for tool in ("kind", "kubectl", ENGINE):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH (the kind tests need kind, kubectl and a container engine)"
    info = subprocess.run([ENGINE, "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        return f"no container engine: `{ENGINE} info` failed ({(info.stderr.strip().splitlines() or [''])[-1]})"
    return None


def run(*command: str, timeout: float = 600, **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory) -> str:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    path = str(tmp_path_factory.mktemp("kind") / "kubeconfig")
    existing = run("kind", "get", "clusters").split()
    if CLUSTER not in existing:
        run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s", timeout=900)
    run("kind", "export", "kubeconfig", "--name", CLUSTER, "--kubeconfig", path)
    yield path
    if os.environ.get("RLHF_E2E_KEEP") != "1" and CLUSTER not in existing:
        run("kind", "delete", "cluster", "--name", CLUSTER, timeout=300)


@pytest.fixture(scope="module")
def kubectl(kubeconfig):
    def call(*args: str, timeout: float = 600) -> str:
        return run("kubectl", "--kubeconfig", kubeconfig, "--namespace", NAMESPACE, *args, timeout=timeout)

    return call


@pytest.fixture(scope="module")
def deployed(kubeconfig, kubectl):
    """The image built and loaded, the kind overlay applied, the setup Job done and the servers rolled out."""
    run(ENGINE, "build", "-t", IMAGE, "--build-arg", "VARIANT=cpu", str(REPO), timeout=3000)
    run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER, timeout=900)
    run("kubectl", "--kubeconfig", kubeconfig, "apply", "-k", str(REPO / "k8s/overlays/kind"))
    kubectl("wait", "--for=condition=complete", "job/setup", "--timeout=900s", timeout=960)
    for name in ("reward", "reference", "policy"):
        kubectl("rollout", "status", f"deployment/{name}", "--timeout=600s", timeout=660)
    from rlhf.k8s.cluster import connect

    return connect(kubeconfig, None, NAMESPACE)


def rlhf_k8s(kubeconfig: str, *args: str) -> str:
    from rlhf.cli import main

    assert main(["k8s", *args, "--kubeconfig", kubeconfig]) == 0, args
    return ""


# Prints what a run dir on the volume holds: complete checkpoints, the ranks that wrote the newest (a random
# state file each), the steps in metrics.jsonl, the final policy.
RUN_FILES = """
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
metrics = out / "metrics.jsonl"
complete = sorted(p for p in out.glob("checkpoints/step-*") if (p / "trainer_state.pt").exists())
print(json.dumps({
    "checkpoints": [p.name for p in complete],
    "ranks": len(list((complete[-1] / "rng").glob("rank-*.pt"))) if complete else 0,
    "steps": [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    if metrics.exists() else [],
    "final_policy": (out / "policy" / "config.json").exists(),
}))
"""


def run_files(kubectl, out: str) -> dict:
    """Read a run dir through a reward pod, which mounts the volume (read-only)."""
    return json.loads(kubectl("exec", "deployment/reward", "-c", "reward", "--", "python", "-c", RUN_FILES, out))


def wait_for_job(cluster, name: str, timeout: float) -> str:
    from rlhf.k8s.status import job_state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(cluster.batch.read_namespaced_job(name=name, namespace=NAMESPACE))
        if state in ("Complete", "Failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"job {name} not finished after {timeout:.0f}s")


def learner_step(cluster) -> int:
    from rlhf.k8s.status import LEARNER_PORT, learner_status
    from rlhf.k8s.tunnel import Tunnel, pod_port_opener

    pod = cluster.running_learner_pod()
    if pod is None:
        return -1
    opener = pod_port_opener(cluster.core, pod.metadata.name, NAMESPACE, LEARNER_PORT)
    with Tunnel(opener) as tunnel:
        return learner_status(tunnel.address, cluster.auth_token()).step


def log_records(cluster, job: str) -> list[dict]:
    pod = cluster.newest_job_pod(job)
    records = []
    for line in cluster.logs(pod.metadata.name, follow=False, tail=None):
        with contextlib.suppress(ValueError):  # progress bars and the startup line are plain text
            records.append(json.loads(line))
    return records


def test_scores_through_a_port_forward(deployed):
    from rlhf.core.client import ClientOptions
    from rlhf.k8s.tunnel import Tunnel, pod_port_opener
    from rlhf.reward.client import RewardClient

    pod = next(p for p in deployed.pods("app.kubernetes.io/name=reward") if p.status.phase == "Running")
    with Tunnel(pod_port_opener(deployed.core, pod.metadata.name, NAMESPACE, 50051)) as tunnel:
        options = ClientOptions(timeout=30, auth_token=deployed.auth_token())
        with RewardClient(tunnel.address, options) as reward:
            scores = reward.score([("What is 2 + 2?", "4"), ("What is 2 + 2?", "five")])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)


def test_a_short_ppo_job_of_two_learner_pods_runs_to_completion_with_logs_and_a_checkpoint(
    deployed, kubeconfig, kubectl
):
    out = "/data/runs/e2e-short"
    rlhf_k8s(
        kubeconfig,
        "submit",
        "ppo",
        "--overlay",
        "kind",
        "--name",
        "ppo-short",
        "--out",
        out,
        "--steps",
        "4",
        "--save-every",
        "2",
    )
    job = deployed.batch.read_namespaced_job(name="ppo-short", namespace=NAMESPACE)
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == 2  # the kind overlay's two pods
    assert wait_for_job(deployed, "ppo-short", timeout=900) == "Complete"
    # rank 0's pod (what `rlhf k8s logs` shows) joined a world of both pods, and both ranks saved their part
    records = log_records(deployed, "ppo-short")
    assert any(r.get("msg") == "joined the process group" and r.get("world_size") == 2 for r in records)
    assert any(r.get("msg") == "checkpoint saved" and r.get("ranks") == 2 for r in records)
    assert kubectl("logs", "job/ppo-short").strip()  # what `kubectl logs -f job/...` shows
    files = run_files(kubectl, out)
    assert files["steps"] == sorted(set(files["steps"])) and len(files["steps"]) == 4
    assert files["checkpoints"] and files["ranks"] == 2 and files["final_policy"]


def test_deleting_the_job_checkpoints_and_creating_it_again_resumes(deployed, kubeconfig, kubectl):
    out, steps = "/data/runs/e2e-resume", 30
    # No periodic checkpoints: the only one can come from the SIGTERM that deleting the Job sends.
    submit = (
        "submit",
        "ppo",
        "--overlay",
        "kind",
        "--name",
        "ppo-resume",
        "--out",
        out,
        "--steps",
        str(steps),
        "--save-every",
        "1000",
    )
    rlhf_k8s(kubeconfig, *submit)
    deadline = time.monotonic() + 900
    while learner_step(deployed) < 3:
        assert time.monotonic() < deadline, "the learner never reached step 3"
        time.sleep(3)
    rlhf_k8s(kubeconfig, "delete", "ppo-resume", "--wait")
    saved = run_files(kubectl, out)
    assert saved["checkpoints"], "deleting the Job left no checkpoint"
    saved_step = int(saved["checkpoints"][-1].split("-")[1])
    assert saved_step >= 3

    rlhf_k8s(kubeconfig, *submit)
    assert wait_for_job(deployed, "ppo-resume", timeout=1200) == "Complete"
    resumed = [r for r in log_records(deployed, "ppo-resume") if r.get("msg") == "resumed"]
    assert resumed and resumed[0]["step"] == saved_step
    files = run_files(kubectl, out)
    # every step exactly once: none lost to the deletion, none repeated after the resume
    assert files["steps"] == sorted(set(files["steps"])) and len(files["steps"]) == steps
    assert files["final_policy"]
