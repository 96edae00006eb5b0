"""`rlhf k8s` against the API: the real kubernetes client talks to a loopback stand-in of the API server
(no cluster here), so requests, responses and errors go through the client's own code.

Every failure a user can cause must print one line, never a traceback."""

from __future__ import annotations

import base64
import time

import pytest

from rlhf.cli import main
from rlhf.k8s import manifests
from rlhf.v1 import learner_pb2
from tests.helpers import free_port, hang_guard
from tests.k8s.manifests import needs_kubectl, validate_strict
from tests.k8s.servers import FakeApiServer, FakeLearner, start_learner, status_body, write_kubeconfig

NS = "/api/v1/namespaces/rlhf"
JOBS = "/apis/batch/v1/namespaces/rlhf/jobs"
PART_OF = {"app.kubernetes.io/part-of": "rlhf"}


@pytest.fixture
def api(tmp_path):
    server = FakeApiServer()
    server.routes[("GET", NS)] = (200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rlhf"}})
    server.kubeconfig(tmp_path)
    yield server
    server.close()


@pytest.fixture
def rlhf_k8s(tmp_path, capsys):
    """Run `rlhf k8s ARGS` against the kubeconfig in tmp_path; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["k8s", *args, "--kubeconfig", str(tmp_path / "kubeconfig")])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("rlhf: error: ") and "Traceback" not in err, err
    return err


def job(name: str, stage: str, labels: dict | None = None, **status) -> dict:
    labels = {**PART_OF, "rlhf.io/stage": stage} if labels is None else labels
    return {"metadata": {"name": name, "namespace": "rlhf", "labels": labels}, "status": status}


def pod(name: str, phase: str, labels: dict, ready: bool = True, restarts: int = 0) -> dict:
    return {
        "metadata": {"name": name, "namespace": "rlhf", "labels": labels, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "main", "image": "rlhf:dev"}]},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "rlhf:dev",
                    "imageID": "",
                    "ready": ready,
                    "restartCount": restarts,
                    "state": {"running": {}} if phase == "Running" else {"waiting": {"reason": "ContainerCreating"}},
                }
            ],
        },
    }


def test_a_missing_kubeconfig_is_one_line(rlhf_k8s):
    code, _, err = rlhf_k8s("status")
    assert code == 2 and "no kubeconfig at" in one_line_error(err)


def test_an_unknown_context_is_one_line(api, rlhf_k8s):
    code, _, err = rlhf_k8s("delete", "--context", "prod")
    assert code == 2 and "no context 'prod'" in one_line_error(err) and "it has: test" in err


def test_an_unreachable_api_server_is_one_line_and_quick(tmp_path, rlhf_k8s):
    write_kubeconfig(tmp_path, f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    code, _, err = rlhf_k8s("status")
    assert code == 2 and time.monotonic() - start < hang_guard(
        60
    )  # a hang guard, not a speed bound: the point is the one-line error
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:" in one_line_error(err)
    assert "Connection refused" in err


def test_a_missing_namespace_is_one_line(api, rlhf_k8s):
    del api.routes[("GET", NS)]
    code, _, err = rlhf_k8s("logs", "ppo")
    assert code == 2 and "namespace rlhf not found" in one_line_error(err)


def test_a_forbidden_call_is_one_line_and_says_what_was_refused(api, rlhf_k8s):
    api.routes[("GET", JOBS)] = (403, status_body(403, "Forbidden", 'jobs.batch is forbidden: User "u"'))
    code, _, err = rlhf_k8s("status")
    assert code == 2 and "listing jobs: 403 Forbidden: jobs.batch is forbidden" in one_line_error(err)


@needs_kubectl
def test_submit_posts_the_built_job(api, rlhf_k8s):
    api.routes[("POST", JOBS)] = (
        201,
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ppo-x", "namespace": "rlhf"}},
    )
    code, out, _ = rlhf_k8s("submit", "ppo", "--steps", "9", "--name", "ppo-x")
    assert code == 0 and "job/ppo-x created in namespace rlhf" in out
    posted = [r for r in api.requests if r["method"] == "POST"]
    assert len(posted) == 1 and posted[0]["path"] == JOBS
    body = posted[0]["body"]
    validate_strict(body)  # what reached the API server, not just what we built
    assert body["metadata"]["name"] == "ppo-x"
    assert "--steps=9" in body["spec"]["template"]["spec"]["containers"][0]["args"]
    template = manifests.job_template(manifests.find_manifests(), "kind", "ppo")
    assert body["spec"]["template"]["spec"]["volumes"] == template["spec"]["template"]["spec"]["volumes"]


@needs_kubectl
def test_submitting_a_job_that_exists_is_one_line(api, rlhf_k8s):
    api.routes[("POST", JOBS)] = (409, status_body(409, "AlreadyExists", 'jobs.batch "ppo" already exists'))
    code, _, err = rlhf_k8s("submit", "ppo")
    assert code == 2 and "job ppo already exists in namespace rlhf" in one_line_error(err)


def test_delete_lets_the_pods_go_in_the_background_and_can_wait_for_them(api, rlhf_k8s):
    # The API answers a Job delete with a Status (a plain dict in this client), not a Job.
    api.routes[("DELETE", f"{JOBS}/ppo")] = (200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
    api.routes[("GET", f"{NS}/pods")] = (200, {"kind": "PodList", "apiVersion": "v1", "items": []})
    code, out, _ = rlhf_k8s("delete", "ppo", "--wait")
    assert code == 0 and "job/ppo deleted" in out and "pods are gone" in out
    delete = next(r for r in api.requests if r["method"] == "DELETE")
    policy = delete["query"].get("propagationPolicy", [None])[0] or (delete["body"] or {}).get("propagationPolicy")
    assert policy == "Background"  # the API's default for Jobs would orphan the pods, leaving them running
    listed = next(r for r in api.requests if r["path"] == f"{NS}/pods")
    assert listed["query"]["labelSelector"] == ["batch.kubernetes.io/job-name=ppo"]


def test_deleting_a_missing_job_is_one_line(api, rlhf_k8s):
    code, _, err = rlhf_k8s("delete", "ppo")
    assert code == 2 and "no job ppo in namespace rlhf" in one_line_error(err)


def test_status_shows_jobs_pods_and_the_learner_step(api, rlhf_k8s):
    api.routes[("GET", JOBS)] = (
        200,
        {
            "kind": "JobList",
            "apiVersion": "batch/v1",
            "items": [
                job("sft", "sft", succeeded=1, conditions=[{"type": "Complete", "status": "True"}]),
                job("ppo", "ppo", active=1),
                job("other", "ppo", active=1, labels={}),
            ],
        },
    )
    api.routes[("GET", f"{NS}/pods")] = (
        200,
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "items": [
                pod("policy-1", "Running", {**PART_OF, "app.kubernetes.io/name": "policy"}, restarts=2),
                pod("ppo-abc", "Pending", {**PART_OF, "app.kubernetes.io/name": "learner"}, ready=False),
                pod("elsewhere", "Running", {"app.kubernetes.io/name": "learner"}),  # not ours: not listed
            ],
        },
    )
    token = "s3cret"
    api.routes[("GET", f"{NS}/secrets/rlhf-auth")] = (
        200,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "rlhf-auth"},
            "data": {"token": base64.b64encode(token.encode()).decode()},
        },
    )

    code, out, _ = rlhf_k8s("status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "namespace rlhf"
    assert ["ppo", "ppo", "Running", "0", "0"] in [line.split() for line in lines]
    assert ["sft", "sft", "Complete", "1", "0"] in [line.split() for line in lines]
    assert ["policy-1", "Running", "1/1", "2"] in [line.split() for line in lines]
    assert ["ppo-abc", "ContainerCreating", "0/1", "0"] in [line.split() for line in lines]
    assert "other" not in out and "elsewhere" not in out
    assert lines[-1] == "learner: not running"  # its pod is still Pending

    # --learner dials a learner directly; the token comes from the rlhf-auth Secret
    status = learner_pb2.LearnerStatus(step=7, total_steps=20, phase="update", weights_version=7)
    server, port = start_learner(FakeLearner(status, token=token))
    try:
        code, out, _ = rlhf_k8s("status", "--learner", f"127.0.0.1:{port}")
        assert out.splitlines()[-1] == f"learner 127.0.0.1:{port}: step 7/20, phase update, weights version 7"
        del api.routes[("GET", f"{NS}/secrets/rlhf-auth")]  # no token: the learner refuses, status still prints
        code, out, _ = rlhf_k8s("status", "--learner", f"127.0.0.1:{port}")
        assert code == 0 and out.splitlines()[-1].startswith("learner: no answer (UNAUTHENTICATED")
    finally:
        server.stop(None)


def test_logs_prints_the_newest_pod_of_the_job_and_follows(api, rlhf_k8s):
    OF_PPO = {"batch.kubernetes.io/job-name": "ppo"}
    api.routes[("GET", f"{NS}/pods")] = (
        200,
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "items": [
                {
                    **pod("ppo-new", "Running", {}),
                    "metadata": {
                        "name": "ppo-new",
                        "namespace": "rlhf",
                        "labels": OF_PPO,
                        "creationTimestamp": "2026-01-02T00:00:00Z",
                    },
                },
                pod("ppo-old", "Failed", OF_PPO),
                pod("sft-newer", "Running", {"batch.kubernetes.io/job-name": "sft"}),
            ],
        },
    )
    api.routes[("GET", f"{NS}/pods/ppo-new/log")] = (200, '{"msg": "step 1"}\n{"msg": "step 2"}\n')
    code, out, _ = rlhf_k8s("logs", "ppo", "--tail", "5")
    assert code == 0 and out.splitlines() == ['{"msg": "step 1"}', '{"msg": "step 2"}']
    code, out, _ = rlhf_k8s("logs", "ppo", "-f")
    assert code == 0 and out.splitlines() == ['{"msg": "step 1"}', '{"msg": "step 2"}']
    reads = [r["query"] for r in api.requests if r["path"].endswith("/log")]
    assert reads[0]["tailLines"] == ["5"] and "follow" not in reads[0]
    assert reads[1]["follow"] == ["true"]


def test_logs_of_a_learner_of_several_pods_are_rank_0s(api, rlhf_k8s):
    """Pod 0 holds rank 0, which logs the run; the other pods may be newer."""

    def learner_pod(name: str, index: str) -> dict:
        labels = {"batch.kubernetes.io/job-name": "ppo", "batch.kubernetes.io/job-completion-index": index}
        return pod(name, "Running", labels)

    api.routes[("GET", f"{NS}/pods")] = (
        200,
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "items": [learner_pod("ppo-0-abc", "0"), learner_pod("ppo-1-def", "1")],
        },
    )
    api.routes[("GET", f"{NS}/pods/ppo-0-abc/log")] = (200, '{"msg": "step 1"}\n')
    code, out, _ = rlhf_k8s("logs", "ppo")
    assert code == 0 and out.splitlines() == ['{"msg": "step 1"}']
