"""The NetworkPolicies allow exactly the connections the design needs.

A small evaluator applies the NetworkPolicy rules (isolation, additive allows, pod and namespace
selectors, ports) to the pods the overlay actually creates, labelled as rendered, plus a few pods
outside the namespace; the set of allowed connections must equal the expected set.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.k8s.manifests import needs_kubectl, of_kind, rendered

pytestmark = needs_kubectl


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: tuple


def labels_of(pod: Pod) -> dict:
    return dict(pod.labels)


def selects(selector: dict | None, labels: dict) -> bool:
    assert set(selector or {}) <= {"matchLabels"}, f"evaluator handles matchLabels only: {selector}"
    return (selector or {}).get("matchLabels", {}).items() <= labels.items()


def peer_matches(peer: dict, pod: Pod, policy_namespace: str) -> bool:
    assert "ipBlock" not in peer, "no ipBlock rules expected"
    namespace_labels = {"kubernetes.io/metadata.name": pod.namespace}
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = pod.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector"), labels_of(pod))


def port_matches(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    # an entry without a port opens every port of its protocol
    return not ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports)


def allowed_one_way(policies, subject: Pod, peer: Pod, port: int, protocol: str, direction: str) -> bool:
    """Whether `subject`'s policies let traffic in from (Ingress) or out to (Egress) `peer`."""
    applying = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and selects(p["spec"]["podSelector"], labels_of(subject))
        and direction in p["spec"]["policyTypes"]
    ]
    if not applying:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in applying:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(x, peer, policy["metadata"]["namespace"]) for x in peers)) and (
                port_matches(rule, port, protocol)
            ):
                return True
    return False


def allowed(policies, source: Pod, target: Pod, port: int, protocol: str = "TCP") -> bool:
    return allowed_one_way(policies, source, target, port, protocol, "Egress") and allowed_one_way(
        policies, target, source, port, protocol, "Ingress"
    )


def cluster_pods(overlay: str) -> dict[str, Pod]:
    """The overlay's pods (with their rendered labels) and a few pods elsewhere in the cluster."""
    pods = {}
    for doc in list(rendered(overlay)) + list(rendered(f"{overlay}/jobs")):
        if doc["kind"] in ("Deployment", "Job"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            pods[doc["metadata"]["name"]] = Pod(
                doc["metadata"]["name"], doc["metadata"]["namespace"], tuple(sorted(labels.items()))
            )
    outside = {
        "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}),
        "prometheus": ("monitoring", {"app": "prometheus"}),
        "evaluator": ("eval", {"rlhf.io/reward-client": "true"}),
        "stranger": ("default", {"app": "stranger"}),
        "stranger-in-rlhf": ("rlhf", {"app": "stranger"}),
    }
    for name, (namespace, labels) in outside.items():
        pods[name] = Pod(name, namespace, tuple(sorted(labels.items())))
    return pods


EXPECTED = {
    ("ppo", "policy", 50052),
    ("ppo", "reward", 50051),
    ("ppo", "reference", 50053),
    ("policy", "ppo", 50054),  # replicas pull the current weights at start
    ("evaluator", "reward", 50051),
    ("prometheus", "policy", 9090),
    ("prometheus", "reward", 9090),
    ("prometheus", "reference", 9090),
}
PORTS = [50051, 50052, 50053, 50054, 9090]
OUTSIDE = {"kube-dns", "prometheus", "evaluator", "stranger"}


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_only_the_designed_connections_are_allowed(overlay):
    policies = list(of_kind(rendered(overlay), "NetworkPolicy").values())
    pods = cluster_pods(overlay)
    assert {"policy", "reward", "reference", "ppo", "sft", "rm"} <= set(pods)
    got = {
        (s, t, port)
        for s in pods
        for t in pods
        for port in PORTS
        if s != t and not (s in OUTSIDE and t in OUTSIDE) and allowed(policies, pods[s], pods[t], port)
    }
    assert got == EXPECTED


@pytest.mark.parametrize("overlay", ["kind", "gpu"])
def test_every_pod_in_the_namespace_resolves_names_and_nothing_else_leaves(overlay):
    policies = list(of_kind(rendered(overlay), "NetworkPolicy").values())
    pods = cluster_pods(overlay)
    ours = [p for p in pods.values() if p.namespace == "rlhf"]
    for pod in ours:
        for protocol in ("UDP", "TCP"):
            assert allowed(policies, pod, pods["kube-dns"], 53, protocol), pod.name
        assert not allowed(policies, pod, pods["stranger"], 443), pod.name
        assert not allowed(policies, pod, pods["kube-dns"], 443), pod.name


def test_the_evaluator_checks_what_it_claims():
    """Known answers on hand-made policies, so the test above can fail."""
    a, b = Pod("a", "ns", (("app", "a"),)), Pod("b", "ns", (("app", "b"),))
    deny = {"metadata": {"namespace": "ns"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    open_b = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}],
        },
    }
    assert allowed([], a, b, 80)
    assert not allowed([deny], a, b, 80)
    assert allowed([deny, open_b], a, b, 80)
    assert not allowed([deny, open_b], a, b, 81)
    assert not allowed([deny, open_b], b, a, 80)
    any_port = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "b"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"protocol": "TCP"}]}],
        },
    }
    assert allowed([deny, any_port], a, b, 81) and not allowed([deny, any_port], a, b, 81, "UDP")
