"""The optional mtls component (k8s/components/mtls, and mtls/cert-manager): rendered on top of both overlays,
it validates strictly, every gRPC hop carries the certificates the servers and clients read, each certificate
names the Service its clients dial, kubelet probes the plaintext health port, and no pod may reach that port."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import main_container, needs_kubectl, of_kind, pod_spec, rendered, validate_strict
from tests.k8s.test_networkpolicy import EXPECTED, OUTSIDE, PORTS, allowed, cluster_pods

pytestmark = needs_kubectl

MTLS = ("mtls",)
WITH_CERT_MANAGER = ("mtls", "mtls/cert-manager")
HEALTH_PORT = 9091
MOUNT = "/var/run/secrets/rlhf-tls"
SERVERS = {"policy": 50052, "reward": 50051, "reference": 50053}
# what each process reads (rlhf.core.server / rlhf.core.client / the learner's --service-tls-*)
TLS_ENV = {
    "RLHF_TLS_CERT": f"{MOUNT}/tls.crt",
    "RLHF_TLS_KEY": f"{MOUNT}/tls.key",
    "RLHF_TLS_CLIENT_CA": f"{MOUNT}/ca.crt",
    "RLHF_TLS_CA": f"{MOUNT}/ca.crt",
    "RLHF_TLS_CLIENT_CERT": f"{MOUNT}/tls.crt",
    "RLHF_TLS_CLIENT_KEY": f"{MOUNT}/tls.key",
    "RLHF_HEALTH_PORT": str(HEALTH_PORT),
}


def workloads(overlay: str) -> dict[str, dict]:
    """The three servers and the learner's Job, with the component."""
    docs = rendered(overlay, WITH_CERT_MANAGER) + rendered(f"{overlay}/jobs", MTLS)
    return {**of_kind(docs, "Deployment"), "learner": of_kind(docs, "Job")["ppo"]}


def certificates(overlay: str) -> dict[str, dict]:
    return {
        d["spec"]["secretName"]: d
        for d in rendered(overlay, WITH_CERT_MANAGER)
        if d["apiVersion"] == "cert-manager.io/v1" and d["kind"] == "Certificate"
    }


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
@pytest.mark.parametrize("half", ["", "/jobs"])
def test_the_component_renders_and_validates_strictly(overlay, half):
    docs = rendered(overlay + half, MTLS)
    assert docs and all(d["metadata"]["namespace"] == "rlhf" for d in docs if d["kind"] != "Namespace")
    for doc in docs:
        validate_strict(doc)


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_cert_manager_objects_are_well_formed_and_land_in_the_namespace(overlay):
    """CRDs: the strict validator has no schema for them, so their fields are checked here."""
    docs = [d for d in rendered(overlay, WITH_CERT_MANAGER) if d["apiVersion"] == "cert-manager.io/v1"]
    issuers = of_kind(docs, "Issuer")
    assert set(issuers) == {"rlhf-selfsigned", "rlhf-ca"}
    assert issuers["rlhf-ca"]["spec"]["ca"]["secretName"] == "rlhf-ca"
    for doc in docs:
        assert doc["metadata"]["namespace"] == "rlhf"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        if doc["kind"] == "Certificate":
            spec = doc["spec"]
            assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["name"] in issuers
            assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}
    assert certificates(overlay)["rlhf-ca"]["spec"]["isCA"] is True


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_every_workload_serves_and_calls_with_its_own_certificate(overlay):
    certs = certificates(overlay)
    for name, workload in workloads(overlay).items():
        container, spec = main_container(workload), pod_spec(workload)
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert {k: env.get(k) for k in TLS_ENV} == TLS_ENV, name
        (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
        secret = volume["secret"]["secretName"]
        assert secret == f"rlhf-tls-{name}" and volume["secret"]["defaultMode"] == 0o440
        assert {"name": "tls", "mountPath": MOUNT, "readOnly": True} in container["volumeMounts"]
        usages = set(certs[secret]["spec"]["usages"])
        assert {"server auth", "client auth"} <= usages, name  # each end of its links


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_each_certificate_names_the_service_its_clients_dial(overlay):
    certs = certificates(overlay)
    docs = rendered(overlay, WITH_CERT_MANAGER)
    learner_args = main_container(workloads(overlay)["learner"])["args"]
    dialed = {name: next(a.split("=", 1)[1] for a in learner_args if a.startswith(f"--{name}=")) for name in SERVERS}
    dialed["learner"] = next(iter(of_kind(docs, "ConfigMap").values()))["data"]["LEARNER_ADDRESS"]  # policy -> learner
    for name, target in dialed.items():
        host = target.rsplit(":", 1)[0]
        names = certs[f"rlhf-tls-{name}"]["spec"]["dnsNames"]
        assert host in names and f"{host}.rlhf.svc.cluster.local" in names, (name, host, names)
        assert host in of_kind(docs, "Service")


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_kubelet_probes_the_plaintext_health_port(overlay):
    for name, workload in workloads(overlay).items():
        container = main_container(workload)
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
        assert probes and all(p["grpc"] == {"port": HEALTH_PORT} for p in probes), name
        assert {"name": "health", "containerPort": HEALTH_PORT} in container["ports"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert grpc_port == SERVERS.get(name, 50054)  # the API itself stays where its clients dial


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_the_network_policies_still_allow_exactly_the_designed_links_and_no_pod_reaches_health(overlay):
    docs = rendered(overlay, WITH_CERT_MANAGER)
    policies = list(of_kind(docs, "NetworkPolicy").values())
    pods = cluster_pods(overlay)
    got = {
        (s, t, port)
        for s in pods
        for t in pods
        for port in [*PORTS, HEALTH_PORT]
        if s != t and not (s in OUTSIDE and t in OUTSIDE) and allowed(policies, pods[s], pods[t], port)
    }
    assert got == EXPECTED


def test_render_names_an_unknown_component():
    from rlhf.core.errors import UserError
    from rlhf.k8s import manifests
    from tests.k8s.manifests import ROOT

    with pytest.raises(UserError, match="unknown component 'mtlss'; choose from: gpu, mtls, mtls/cert-manager"):
        manifests.render(ROOT, "kind", ("mtlss",))
