"""The README's promises that a test can check without a model: its imports work."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def readme_imports() -> list[tuple[str, list[str]]]:
    """(module, names) for every `from X import a, b` line in the README's Python blocks."""
    found = []
    for block in python_blocks():
        for module, names in re.findall(r"^from (\S+) import (.+)$", block, flags=re.M):
            found.append((module, [n.strip() for n in names.split(",")]))
    return found


def test_the_readme_shows_python_imports():
    assert len(readme_imports()) >= 4


def test_every_import_the_readme_shows_works():
    for module, names in readme_imports():
        imported = importlib.import_module(module)
        for name in names:
            assert hasattr(imported, name), f"from {module} import {name}"


def test_the_three_model_packages_export_a_client_and_a_local_twin():
    from rlhf.policy import LocalPolicy, PolicyClient
    from rlhf.reference import LocalReference, ReferenceClient
    from rlhf.reward import LocalReward, RewardClient

    for client, local in ((PolicyClient, LocalPolicy), (ReferenceClient, LocalReference), (RewardClient, LocalReward)):
        assert client.__module__.endswith(".client") and local.__module__.endswith(".local")
        assert callable(getattr(local, "model_info", None)) and callable(getattr(client, "model_info", None))
