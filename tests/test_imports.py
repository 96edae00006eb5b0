"""The layout's dependency directions, read from every module's imports (ast, so nothing is executed).

- `core` (and the generated stubs, `v1`) import no other package.
- The model services (policy, reward, reference) import only core, the stubs and themselves.
- The learner reaches the other services only through their `client` and `local` modules.
- `training` (SFT, RM training, DPO) is built like the learner: core, the stubs, itself, and services only
  through their `client`/`local` (DPO's pi_ref is a reference service or a LocalReference).
- `toy` (tiny model, synthetic task, local processes) and the demo sit on top and may import any package;
  k8s only core and the stages' configs (`rlhf k8s submit` takes their flags); `label` (rlhf label) core, the
  row parser of training.preferences and the front doors.
- Only the entry point (rlhf/cli.py) reaches a package's `cli` module; `rlhf train sft|rm|dpo` are
  training's own (training/cli.py), so a service's CLI imports no more than its service does.
- No cycles between packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "services" / "rlhf"
MODEL_SERVICES = ("policy", "reward", "reference")
FRONT_DOORS = {f"{service}.{module}" for service in MODEL_SERVICES for module in ("client", "local")}
PACKAGES = {"core", "v1", "policy", "reward", "reference", "learner", "training", "toy", "demo", "k8s", "label"}

# package -> what it may import besides itself: a package, or a module (and the names in it)
ALLOWED: dict[str, set[str]] = {
    "core": {"v1"},
    "v1": set(),
    "policy": {"core", "v1"},
    "reward": {"core", "v1"},
    "reference": {"core", "v1"},
    "learner": {"core", "v1"} | FRONT_DOORS,
    "training": {"core", "v1"} | FRONT_DOORS,
    "toy": PACKAGES,
    "demo": PACKAGES,  # the top of the stack: it runs every stage and reads the learner's checkpoints
    "k8s": {"core", "v1", "training.config", "learner.config"},  # `k8s submit STAGE` takes the stages' flags
    # rlhf label writes the rankings that training reads: it checks each against the one row parser; it
    # samples responses through the policy's client
    "label": {"core", "v1", "training.preferences"} | FRONT_DOORS,
    "": {"core", "cli"},  # rlhf/cli.py, __main__.py: the packages' commands are found by name (COMMAND_MODULES)
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules() -> dict[str, Path]:
    """Every hand-written module, by name without the `rlhf.` prefix (the package itself is "")."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if p.relative_to(ROOT).parts[0] != "v1"}


def rlhf_imports(path: Path) -> set[str]:
    """Every rlhf module a module imports (without the `rlhf.` prefix), wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from rlhf.learner import ppo` imports the module learner.ppo; `from rlhf.core.x import F` only core.x
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [node.module] + [name for name in submodules if is_module(name.removeprefix("rlhf."))]
        else:
            continue
        found |= {name.removeprefix("rlhf.") for name in names if name.startswith("rlhf.")}
    return found - {""}


def package_of(module: str) -> str:
    return module.split(".")[0] if "." in module or module in PACKAGES else ""


def is_cli(module: str) -> bool:
    return module.rsplit(".", 1)[-1] in ("cli", "__main__")


def allowed(importer: str, imported: str) -> bool:
    """Whether module `importer` may import module `imported`."""
    package = package_of(importer)
    if is_cli(imported) and package:  # only the entry point reaches a command module
        return False
    if package and package_of(imported) == package:
        return True
    rules = ALLOWED[package]
    return any(imported == rule or imported.startswith(rule + ".") for rule in rules)


def test_every_package_imports_only_in_the_allowed_directions():
    wrong = []
    for module, path in modules().items():
        assert package_of(module) in ALLOWED, f"rlhf.{module}: a new package needs its rules in ALLOWED"
        wrong += [f"rlhf.{module} imports rlhf.{name}" for name in rlhf_imports(path) if not allowed(module, name)]
    assert not wrong, "\n".join(sorted(wrong))


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in modules().items():
        package = package_of(module)
        if package:
            targets = {package_of(imported) for imported in rlhf_imports(path)}
            graph.setdefault(package, set()).update(targets - {package, ""})
    return graph


def test_no_cycles_between_packages():
    graph = package_graph()
    done: set[str] = set()

    def visit(package: str, trail: list[str]) -> None:
        if package in trail:
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(package) :] + [package]))
        if package in done:
            return
        for target in sorted(graph.get(package, ())):
            visit(target, trail + [package])
        done.add(package)

    for package in sorted(graph):
        visit(package, [])


def test_the_checker_sees_a_wrong_import():
    assert not allowed("policy.model", "reward.service")
    assert not allowed("learner.loop", "policy.model")
    assert allowed("learner.loop", "policy.client")
    assert rlhf_imports(ROOT / "learner" / "loop.py") >= {"learner.ppo", "core.distributed", "core.errors"}
    assert not allowed("core.batching", "toy.tiny")
    assert not allowed("toy.synthetic", "reward.cli")
    assert not allowed("reward.cli", "training.rm")
    assert allowed("training.cli", "training.rm")
    assert not allowed("reward.service", "training.rm")
