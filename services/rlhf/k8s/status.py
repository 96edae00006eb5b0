"""What `rlhf k8s status` shows: Job and pod phases from the API server, the learner's step over gRPC."""

from __future__ import annotations

import grpc

from rlhf.core.client import ClientOptions, describe_rpc_error, make_channel
from rlhf.core.security import read_secret
from rlhf.v1 import learner_pb2, learner_pb2_grpc

LEARNER_PORT = 50054


def job_state(job) -> str:
    """Complete, Failed or Suspended from the Job's conditions; else Running (pods active) or Pending."""
    status = job.status
    for condition in (status and status.conditions) or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed", "Suspended"):
            return condition.type
    return "Running" if status and status.active else "Pending"


def pod_state(pod) -> tuple[str, str, int]:
    """(state, ready containers, restarts). The state is the phase, or why a container waits or ended."""
    status = pod.status
    containers = (status and status.container_statuses) or []
    state = (status and status.phase) or "Unknown"
    for c in containers:
        if c.state and c.state.waiting and c.state.waiting.reason:
            state = c.state.waiting.reason  # ContainerCreating, CrashLoopBackOff, ImagePullBackOff...
        elif c.state and c.state.terminated and c.state.terminated.reason and state == "Running":
            state = c.state.terminated.reason
    for c in (status and status.init_container_statuses) or []:
        if c.state and c.state.running:
            state = f"Init:{c.name}"
    ready = sum(1 for c in containers if c.ready)
    total = len(pod.spec.containers) if pod.spec else len(containers)
    return state, f"{ready}/{total}", sum(c.restart_count or 0 for c in containers)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def format_status(namespace: str, jobs: list, pods: list, learner: str) -> str:
    job_rows = [
        [
            j.metadata.name,
            (j.metadata.labels or {}).get("rlhf.io/stage", "-"),
            job_state(j),
            str((j.status and j.status.succeeded) or 0),
            str((j.status and j.status.failed) or 0),
        ]
        for j in sorted(jobs, key=lambda j: j.metadata.name)
    ]
    pod_rows = [[p.metadata.name, *map(str, pod_state(p))] for p in pods]
    parts = [f"namespace {namespace}", ""]
    parts.append(_table(["JOB", "STAGE", "STATE", "SUCCEEDED", "FAILED"], job_rows) if job_rows else "no jobs")
    parts.append("")
    parts.append(_table(["POD", "STATE", "READY", "RESTARTS"], pod_rows) if pod_rows else "no pods")
    parts += ["", learner]
    return "\n".join(parts)


def describe_learner(status: learner_pb2.LearnerStatus) -> str:
    total = f"/{status.total_steps}" if status.total_steps else ""
    return f"step {status.step}{total}, phase {status.phase or '-'}, weights version {status.weights_version}"


def learner_status(address: str, token: str | None, timeout: float = 5.0) -> learner_pb2.LearnerStatus:
    """rlhf.v1.Learner/GetStatus through the generated stub."""
    options = ClientOptions(timeout=timeout, max_attempts=2, auth_token=token)
    channel = make_channel(address, options)
    try:
        stub = learner_pb2_grpc.LearnerStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return stub.GetStatus(learner_pb2.GetStatusRequest(), timeout=timeout, metadata=metadata)
    finally:
        channel.close()


def learner_line(cluster, address: str | None, token_file: str | None) -> str:
    """One line on the learner: its step, or why there is none. Never fails the whole status."""
    from rlhf.k8s.tunnel import Tunnel, pod_port_opener

    token = read_secret(token_file) if token_file else cluster.auth_token()
    try:
        if address:
            return f"learner {address}: {describe_learner(learner_status(address, token))}"
        pod = cluster.running_learner_pod()
        if pod is None:
            return "learner: not running"
        opener = pod_port_opener(cluster.core, pod.metadata.name, cluster.namespace, LEARNER_PORT)
        with Tunnel(opener) as tunnel:
            return f"learner {pod.metadata.name}: {describe_learner(learner_status(tunnel.address, token))}"
    except grpc.RpcError as err:
        return f"learner: no answer ({describe_rpc_error(err)})"
