"""The learner as several pods: the ppo Job is an Indexed Job whose pods meet at pod 0's torchrun rendezvous
through a headless Service, and `rlhf k8s submit ppo --nodes N --gpus-per-node G` builds it.

The wiring must agree everywhere: the rendezvous Service's name is the pods' subdomain and the host of
--rdzv-endpoint, one port (29400) in the Service, the endpoint and the container, the learner Service on
pod 0 only, one GPU per process, a failure policy that stops every pod at once, and NetworkPolicies that let
learner pods, and only them, reach each other on any TCP port."""

from __future__ import annotations

import argparse

import pytest
import yaml

from rlhf.cli import main
from rlhf.k8s import manifests
from tests.k8s.manifests import ROOT, main_container, needs_kubectl, of_kind, pod_spec, rendered, validate_strict
from tests.k8s.test_networkpolicy import Pod, allowed, cluster_pods
from tests.k8s.test_submit import submitted

pytestmark = needs_kubectl

INDEX = "batch.kubernetes.io/job-completion-index"
RDZV_PORT = 29400
COLLECTIVE_PORT = 45678  # one of the ephemeral ports gloo and NCCL connect on
MULTI_POD = {  # name: how it is made
    "kind overlay (2 x 1)": lambda: of_kind(rendered("kind/jobs"), "Job")["ppo"],
    "gpu, 2 x 4": lambda: submitted(["ppo", "--overlay", "gpu", "--nodes", "2", "--gpus-per-node", "4"]),
    "kind, 3 x 2, renamed": lambda: submitted(["ppo", "--nodes", "3", "--gpus-per-node", "2", "--name", "ppo-b"]),
    "gpu with mtls, 2 x 8": lambda: submitted(
        ["ppo", "--overlay", "gpu", "--component", "mtls", "--nodes", "2", "--gpus-per-node", "8"]
    ),
}


def options(job: dict) -> dict[str, str | None]:
    return manifests.parse_options(main_container(job)["args"])[1]


def learner_pod(job: dict, index: int) -> Pod:
    """A pod of the Job as the Job controller makes it: the template's labels and its completion index."""
    labels = {**job["spec"]["template"]["metadata"]["labels"], INDEX: str(index)}
    return Pod(f"{job['metadata']['name']}-{index}", "rlhf", tuple(sorted(labels.items())))


@pytest.mark.parametrize("made", MULTI_POD)
def test_a_learner_of_several_pods_validates_strictly(made):
    job = MULTI_POD[made]()
    validate_strict(job)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(options(job)["nnodes"]) > 1


@pytest.mark.parametrize("made", MULTI_POD)
def test_the_rendezvous_is_wired_the_same_everywhere(made):
    job, services = MULTI_POD[made](), of_kind(rendered("kind"), "Service")
    name, opts = job["metadata"]["name"], options(job)
    host, port = opts["rdzv-endpoint"].rsplit(":", 1)
    pod_name, subdomain = host.split(".")
    rdzv = services[subdomain]
    assert pod_spec(job)["subdomain"] == subdomain == rdzv["metadata"]["name"] == "ppo-rdzv"
    assert pod_name == f"{name}-0" and opts["rdzv-id"] == name  # the Indexed Job's hostname of pod 0
    assert rdzv["spec"]["clusterIP"] == "None" and rdzv["spec"]["publishNotReadyAddresses"] is True
    (service_port,) = rdzv["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in main_container(job)["ports"]}
    assert int(port) == service_port["port"] == container_ports[service_port["targetPort"]] == RDZV_PORT
    for index in range(job["spec"]["completions"]):  # a DNS record for every pod of the Job
        assert rdzv["spec"]["selector"].items() <= dict(learner_pod(job, index).labels).items()


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_the_learner_service_selects_pod_0_only(overlay):
    learner = of_kind(rendered(overlay), "Service")["learner"]
    job = of_kind(rendered(f"{overlay}/jobs"), "Job")["ppo"]
    selected = [i for i in range(3) if learner["spec"]["selector"].items() <= dict(learner_pod(job, i).labels).items()]
    assert selected == [0]


@pytest.mark.parametrize("per_node", [1, 4, 8])
@pytest.mark.parametrize("nodes", [1, 2])
def test_each_learner_pod_of_the_gpu_overlay_asks_for_a_gpu_per_process(nodes, per_node):
    job = submitted(["ppo", "--overlay", "gpu", "--nodes", str(nodes), "--gpus-per-node", str(per_node)])
    validate_strict(job)
    resources = main_container(job)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == str(per_node)
    assert manifests.learner_world(job) == (nodes, per_node)
    # one pod runs torchrun on its own; only several pods need a rendezvous to meet at
    assert ("nproc-per-node" in options(job)) == (nodes * per_node > 1)
    assert ("nnodes" in options(job)) == ("rdzv-endpoint" in options(job)) == (nodes > 1)


def test_the_overlays_ask_for_as_many_gpus_as_they_run_processes():
    gpu = of_kind(rendered("gpu/jobs"), "Job")["ppo"]
    assert main_container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == str(manifests.learner_world(gpu)[1])
    kind = of_kind(rendered("kind/jobs"), "Job")["ppo"]
    assert manifests.learner_world(kind) == (2, 1) and "nvidia.com/gpu" not in str(main_container(kind)["resources"])


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_one_node_of_one_gpu_is_the_plain_one_process_learner(overlay):
    job = submitted(["ppo", "--overlay", overlay, "--nodes", "1", "--gpus-per-node", "1"])
    validate_strict(job)
    args = main_container(job)["args"]
    assert not set(manifests.LAUNCHER_FLAGS) & set(manifests.parse_options(args)[1])
    template_args = main_container(of_kind(rendered(f"{overlay}/jobs"), "Job")["ppo"])["args"]
    # the overlay's args, less the launcher's flags where it has them (kind's 2 pods), in their order
    assert args == [a for a in template_args if not a.startswith(("--nnodes", "--nproc", "--rdzv"))]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1


@pytest.mark.parametrize("made", MULTI_POD)
def test_any_failure_of_a_learner_of_several_pods_fails_the_job(made):
    """A replacement pod would join ranks that lost their peer: every pod stops, and the Job is created again."""
    spec = MULTI_POD[made]()["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert spec["backoffLimit"] == 0 and {r["action"] for r in rules} == {"FailJob"}
    assert {"containerName": "learner", "operator": "NotIn", "values": [0]} in [r.get("onExitCodes") for r in rules]
    assert [{"type": "DisruptionTarget"}] in [r.get("onPodConditions") for r in rules]
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}  # done when rank 0 is
    assert spec["podReplacementPolicy"] == "Failed"


def test_a_learner_of_one_pod_is_retried_and_an_evicted_one_replaced():
    spec = of_kind(rendered("gpu/jobs"), "Job")["ppo"]["spec"]
    assert spec["backoffLimit"] >= 1 and "successPolicy" not in spec
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_learner_pods_reach_each_other_on_any_port_and_nobody_else_reaches_them(overlay):
    policies = list(of_kind(rendered(overlay), "NetworkPolicy").values())
    job = of_kind(rendered(f"{overlay}/jobs"), "Job")["ppo"]
    ranks = [learner_pod(job, 0), learner_pod(job, 1)]
    for port in (RDZV_PORT, COLLECTIVE_PORT):
        assert allowed(policies, ranks[1], ranks[0], port) and allowed(policies, ranks[0], ranks[1], port)
        assert not allowed(policies, ranks[0], ranks[1], port, "UDP")
    others = {name: pod for name, pod in cluster_pods(overlay).items() if name != "ppo"}
    assert {"policy", "reward", "reference", "sft", "rm", "stranger", "stranger-in-rlhf"} <= set(others)
    for name, other in others.items():
        for port in (RDZV_PORT, COLLECTIVE_PORT):
            assert not allowed(policies, other, ranks[0], port), (name, port)  # in from no one else
            assert not allowed(policies, ranks[1], other, port), (name, port)  # out to no one else
    assert allowed(policies, others["policy"], ranks[0], 50054)  # replicas still pull weights from rank 0


def test_submit_with_two_nodes_prints_a_job_that_validates(capsys):
    assert main(["k8s", "submit", "ppo", "--nodes", "2", "--dry-run"]) == 0
    (printed,) = list(yaml.safe_load_all(capsys.readouterr().out))  # the Job alone: ppo-rdzv is in the base
    validate_strict(printed)
    assert printed["kind"] == "Job" and printed["spec"]["completions"] == 2
    assert options(printed)["rdzv-endpoint"] == "ppo-0.ppo-rdzv:29400"
    # kind's Job is 2 pods already: submit's numbers, flags and failure policy (added again) are the overlay's
    assert printed == of_kind(rendered("kind/jobs"), "Job")["ppo"]


@pytest.mark.parametrize("flag", ["--nodes", "--gpus-per-node"])
def test_a_learner_needs_a_pod_and_a_process(capsys, flag):
    assert main(["k8s", "submit", "ppo", flag, "0", "--dry-run"]) == 2
    assert "at least one pod and one process per pod" in capsys.readouterr().err


def test_the_grace_period_leaves_torchrun_time_to_stop_the_ranks_after_one_died():
    """SIGTERM goes to the ranks (they checkpoint within the grace period); when a rank dies instead, torchrun
    gives the others --shutdown-timeout seconds before it kills them, and the pod must outlast that."""
    launch = pytest.importorskip("rlhf.core.launch")
    for overlay in ("kind/jobs", "gpu/jobs"):
        grace = pod_spec(of_kind(rendered(overlay), "Job")["ppo"])["terminationGracePeriodSeconds"]
        assert grace >= launch.SHUTDOWN_TIMEOUT_S + 30, overlay


def test_the_launcher_flags_are_flags_of_rlhf_train_ppo():
    from rlhf.cli import build_parser

    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = next(a for a in top.choices["train"]._actions if isinstance(a, argparse._SubParsersAction))
    known = {s for a in train.choices["ppo"]._actions for s in a.option_strings} if "ppo" in train.choices else set()
    if "--nnodes" not in known:
        pytest.skip("`rlhf train ppo` does not launch torchrun yet")
    assert {f"--{flag}" for flag in manifests.LAUNCHER_FLAGS} <= known


def test_the_kubeflow_example_parses_and_no_kustomization_includes_it():
    """A CRD: the strict validator has no schema for it, so it is checked as YAML and for the learner's labels."""
    (trainjob,) = list(yaml.safe_load_all((ROOT / "examples" / "kubeflow-trainjob.yaml").read_text()))
    assert trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and trainjob["kind"] == "TrainJob"
    for kustomization in ROOT.rglob("kustomization.yaml"):
        assert "examples" not in kustomization.read_text(), kustomization
    (node,) = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    labels = node["template"]["spec"]["template"]["metadata"]["labels"]
    selector = dict(of_kind(rendered("gpu"), "Service")["learner"]["spec"]["selector"])
    assert selector.pop(INDEX) == "0" and selector.items() <= labels.items()
