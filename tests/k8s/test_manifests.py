"""Every overlay renders, validates strictly against a current release's schemas, and has the structure
the design needs: gRPC probes, headless Services, non-root pods, resources, and GPUs where they belong."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest

from rlhf.k8s import manifests
from tests.k8s.manifests import ROOT, main_container, needs_kubectl, of_kind, pod_spec, rendered, validate_strict

pytestmark = needs_kubectl

OVERLAYS = ["gpu", "gpu/jobs", "kind", "kind/jobs"]
SERVICE_OVERLAYS = ["kind", "gpu"]
SERVERS = {"reward": 50051, "policy": 50052, "reference": 50053}


def workloads(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def test_the_overlays_are_the_documented_ones():
    assert manifests.overlays(ROOT) == OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_strictly(overlay):
    docs = rendered(overlay)
    assert docs, f"{overlay} rendered nothing"
    for doc in docs:
        validate_strict(doc)


def test_the_validator_refuses_unknown_fields_and_kinds():
    deployment = copy.deepcopy(of_kind(rendered("kind"), "Deployment")["policy"])
    pod_spec(deployment)["containers"][0]["readinessProbes"] = []  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(deployment)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_strict({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_every_server_has_grpc_probes_on_its_port_and_a_headless_service(overlay):
    docs = rendered(overlay)
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    assert set(deployments) == set(SERVERS)
    for name, port in SERVERS.items():
        container = main_container(deployments[name])
        assert container["args"][:2] == ["serve", name]
        assert f"--port={port}" in container["args"] and "--metrics-port=9090" in container["args"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": port, "metrics": 9090}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (name, probe)
        # the startup probe allows a slow model load before liveness starts counting
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        service = services[name]
        assert service["spec"]["clusterIP"] == "None"
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {"name": "grpc", "port": port, "targetPort": "grpc", "appProtocol": "grpc"} in service["spec"]["ports"]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_the_services_find_each_other_by_the_names_the_manifests_give(overlay):
    docs = rendered(overlay)
    services = of_kind(docs, "Service")
    config = next(iter(of_kind(docs, "ConfigMap").values()))["data"]
    assert config["LEARNER_ADDRESS"] == "learner:50054"
    assert "--learner=$(LEARNER_ADDRESS)" in main_container(of_kind(docs, "Deployment")["policy"])["args"]
    ppo = of_kind(rendered(f"{overlay}/jobs"), "Job")["ppo"]
    args = main_container(ppo)["args"]
    for name, port in SERVERS.items():
        assert f"--{name}={name}:{port}" in args
    learner = services["learner"]
    ppo_labels = ppo["spec"]["template"]["metadata"]["labels"]
    # the ppo Job's pod of index 0 (rank 0, the one that serves): the Job controller adds the index label
    selector = dict(learner["spec"]["selector"])
    assert selector.pop("batch.kubernetes.io/job-completion-index") == "0"
    assert ppo["spec"]["completionMode"] == "Indexed"
    assert selector.items() <= ppo_labels.items()
    assert learner["spec"]["ports"][0]["port"] == 50054
    assert {"name": "grpc", "containerPort": 50054} in main_container(ppo)["ports"]
    assert "--port=50054" in args


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_runs_as_root_or_writes_its_root_filesystem(overlay):
    for workload in workloads(rendered(overlay)):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in all_containers(workload):
            sc = container["securityContext"]
            where = (workload["metadata"]["name"], container["name"])
            assert sc.get("runAsUser", 1) != 0 and sc.get("runAsNonRoot", True) is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]) or container["name"] == (
                "wait-for-model"
            ), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay):
    for workload in workloads(rendered(overlay)):
        for container in all_containers(workload):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), (workload["metadata"]["name"], kind)


def test_the_gpu_overlay_gives_each_model_holding_pod_a_gpu():
    holders = [*of_kind(rendered("gpu"), "Deployment").values(), *of_kind(rendered("gpu/jobs"), "Job").values()]
    assert sorted(w["metadata"]["name"] for w in holders) == ["policy", "ppo", "reference", "reward", "rm", "sft"]
    # a real pretrained model, copied onto the volume, not the tiny one kind makes
    assert "--model=/data/models/base" in main_container(of_kind(rendered("gpu/jobs"), "Job")["sft"])["args"]
    for workload in holders:
        spec, resources = pod_spec(workload), main_container(workload)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1" == resources["requests"]["nvidia.com/gpu"]
        assert spec["runtimeClassName"] == "nvidia"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        shm = [v for v in spec["volumes"] if v["name"] == "dshm"]
        if workload["kind"] == "Job":  # training: data-loader workers and NCCL share tensors through /dev/shm
            assert shm[0]["emptyDir"]["medium"] == "Memory"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in main_container(workload)["volumeMounts"]
        else:
            assert shm == []


@pytest.mark.parametrize("overlay", ["kind", "kind/jobs"])
def test_the_kind_overlays_ask_for_no_gpu(overlay):
    text = json.dumps(rendered(overlay))
    assert "nvidia" not in text and "runtimeClassName" not in text


def test_each_server_has_a_disruption_budget_that_never_blocks_a_drain():
    docs = rendered("gpu")
    budgets, deployments = of_kind(docs, "PodDisruptionBudget"), of_kind(docs, "Deployment")
    assert set(budgets) == set(SERVERS)
    for name, budget in budgets.items():
        assert budget["spec"]["maxUnavailable"] == 1
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_config_and_secrets_referenced_by_pods_exist():
    for overlay, missing in (("kind", set()), ("gpu", {"rlhf-auth"})):
        docs = rendered(overlay) + rendered(f"{overlay}/jobs")
        names = {d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret", "PersistentVolumeClaim")}
        wanted = set()
        for workload in workloads(docs):
            for volume in pod_spec(workload).get("volumes", []):
                wanted |= {
                    volume.get("secret", {}).get("secretName"),
                    volume.get("persistentVolumeClaim", {}).get("claimName"),
                }
            for container in all_containers(workload):
                wanted |= {e["configMapRef"]["name"] for e in container.get("envFrom", [])}
        wanted.discard(None)
        # The gpu overlay ships no token: its Secret is made by hand (docs/kubernetes.md, "On a GPU cluster").
        assert wanted - names == missing, overlay
    assert "Secret" not in {d["kind"] for d in rendered("gpu")}


def test_the_volume_is_shared_across_nodes_only_on_gpu_clusters():
    assert of_kind(rendered("kind"), "PersistentVolumeClaim")["rlhf-data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert of_kind(rendered("gpu"), "PersistentVolumeClaim")["rlhf-data"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_kind_setup_job_makes_every_model_and_file_the_kind_pods_read():
    docs = rendered("kind")
    script = main_container(of_kind(docs, "Job")["setup"])["args"][0]
    config = of_kind(docs, "ConfigMap")
    models = next(iter(config.values()))["data"]
    for key in ("POLICY_MODEL", "REFERENCE_MODEL", "REWARD_MODEL"):
        assert f"step config.json {models[key]} " in script, key
    assert "step prompts.jsonl /data/datasets rlhf data synth" in script
    jobs = of_kind(rendered("kind/jobs"), "Job")
    assert "--model=/data/models/tiny" in main_container(jobs["sft"])["args"]
    assert "--prompts=/data/datasets/prompts.jsonl" in main_container(jobs["ppo"])["args"]
    # every server waits for its model before starting
    for deployment in of_kind(docs, "Deployment").values():
        wait = pod_spec(deployment)["initContainers"][0]
        assert wait["name"] == "wait-for-model" and "config.json" in wait["command"][-1]


def test_the_learner_has_time_to_checkpoint_when_its_job_is_deleted():
    for overlay, at_least in (("kind/jobs", 60), ("gpu/jobs", 600)):
        ppo = of_kind(rendered(overlay), "Job")["ppo"]
        assert pod_spec(ppo)["terminationGracePeriodSeconds"] >= at_least
        assert pod_spec(ppo)["restartPolicy"] == "Never"
        if ppo["spec"]["completions"] == 1:  # one pod is retried; several fail together (test_distributed_learner)
            assert ppo["spec"]["backoffLimit"] >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_rlhf_namespace(overlay):
    for doc in rendered(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "rlhf", (doc["kind"], doc["metadata"]["name"])


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_every_grpc_hop_uses_the_token_from_the_auth_secret(overlay):
    docs = rendered(overlay) + rendered(f"{overlay}/jobs")
    deployments, jobs = of_kind(docs, "Deployment"), of_kind(docs, "Job")
    # (workload, flag): servers check the token; the learner checks it and sends it; policy sends it to the learner
    hops = [(deployments[n], "--auth-token-file") for n in SERVERS] + [
        (jobs["ppo"], "--auth-token-file"),
        (deployments["policy"], "--learner-auth-token-file"),
    ]
    for workload, flag in hops:
        path = next(a.split("=", 1)[1] for a in main_container(workload)["args"] if a.startswith(f"{flag}="))
        mounts = {m["name"]: m["mountPath"] for m in main_container(workload)["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod_spec(workload)["volumes"] if "secret" in v}
        assert any(secrets.get(name) == "rlhf-auth" and path == f"{mount}/token" for name, mount in mounts.items()), (
            workload["metadata"]["name"],
            flag,
        )


def test_the_vllm_component_runs_only_the_policy_on_the_vllm_image_and_engine():
    docs = rendered("gpu", ("vllm",))
    for doc in docs:
        validate_strict(doc)
    deployments, plain = of_kind(docs, "Deployment"), of_kind(rendered("gpu"), "Deployment")
    policy = main_container(deployments["policy"])
    assert policy["image"] == "rlhf-vllm:cuda"
    assert policy["args"] == [*main_container(plain["policy"])["args"], "--engine=vllm", "--vllm-kv-cache-gb=16"]
    assert policy["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for name in ("reward", "reference"):
        assert deployments[name] == plain[name]
