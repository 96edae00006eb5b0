"""Kubernetes: render the kustomize overlays in k8s/, and submit, follow and stop training Jobs.

The manifests themselves live in k8s/ at the repository root; this package is the `rlhf k8s` CLI.
"""
