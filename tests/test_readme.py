"""The README's and the documentation's promises that a test can check without a model: their imports work,
every `rlhf` command they show exists with the flags they give it, the README stays a front door, and no
figure the README once held was lost when it moved to docs/."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from pathlib import Path

from google.protobuf import descriptor_pool

import rlhf.v1
from rlhf.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def documents() -> list[Path]:
    """The README and every page of the documentation site."""
    return [README, *sorted(DOCS.glob("*.md"))]


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, its fences paired in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return [body for language, body in fenced_blocks(path) if language == "python"]


def shell_blocks(path: Path) -> list[str]:
    return [body for language, body in fenced_blocks(path) if language in ("bash", "sh", "console", "")]


def imports_in(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every `from X import a, b` line in the Python blocks of one document."""
    found = []
    for block in python_blocks(path):
        for module, names in re.findall(r"^from (\S+) import (.+)$", block, flags=re.M):
            found.append((module, [n.strip() for n in names.split(",")]))
    return found


def test_the_readme_shows_python_imports():
    assert len(imports_in(README)) >= 4


def test_every_import_the_readme_and_the_docs_show_works():
    shown = [(path.name, module, names) for path in documents() for module, names in imports_in(path)]
    assert len(shown) >= 8  # the README's client example, and the docs' own
    for where, module, names in shown:
        imported = importlib.import_module(module)
        for name in names:
            assert hasattr(imported, name), f"{where}: from {module} import {name}"


def test_the_three_model_packages_export_a_client_and_a_local_twin():
    from rlhf.policy import LocalPolicy, PolicyClient
    from rlhf.reference import LocalReference, ReferenceClient
    from rlhf.reward import LocalReward, RewardClient

    for client, local in ((PolicyClient, LocalPolicy), (ReferenceClient, LocalReference), (RewardClient, LocalReward)):
        assert client.__module__.endswith(".client") and local.__module__.endswith(".local")
        assert callable(getattr(local, "model_info", None)) and callable(getattr(client, "model_info", None))


def rlhf_commands(block: str) -> list[list[str]]:
    """The words after `rlhf` of each command in a shell block (continuations joined, comments and
    everything after a bare `--` dropped; `VAR=x rlhf ...` and `torchrun ... -m rlhf ...` count)."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"\s*(?:&&|\|\||;|\||&)\s*", line.strip()):
            found = re.match(r"(?:[A-Z_]+=\S*\s+)*(?:torchrun\s.*?-m\s+)?rlhf\s+(.*)$", part.strip())
            if found:
                commands.append(found.group(1).split(" -- ")[0].split())
    return commands


def resolve(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The deepest subcommand parser the words name, and the words that named it."""
    parser, path = build_parser(), []
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[word]
        path.append(word)
    return parser, path


def test_every_rlhf_command_the_readme_and_the_docs_show_exists_with_its_flags():
    shown = [
        (path.name, words) for path in documents() for block in shell_blocks(path) for words in rlhf_commands(block)
    ]
    assert sum(where == README.name for where, _ in shown) >= 10
    assert len(shown) >= 50
    wrong = []
    for where, words in shown:
        parser, path = resolve(words)
        flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words))
        unknown = [flag for flag in flags if flag not in parser._option_string_actions]
        if not path or unknown:
            wrong.append(f"{where}: rlhf {' '.join(words)}: {unknown or 'no such command'}")
    assert not wrong, wrong


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    for section in ("## Architecture", "## Two commands", "## Quickstart", "## What it does", "## Known limits"):
        assert section in text, section
    assert text.index("## Architecture") < text.index("## Two commands")  # the picture comes first
    assert "make demo" in text and "make test" in text


def test_every_link_from_the_readme_into_the_repository_exists():
    """mkdocs --strict checks the links between docs pages; the README lives outside the site."""
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    assert "docs/memory.md" in links and "docs/benchmarks.md" in links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def figures_the_readme_held() -> list[str]:
    lines = (ROOT / "tests" / "data" / "readme_figures.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def test_every_figure_the_readme_held_is_still_in_the_readme_or_the_docs():
    text = " ".join(re.sub(r"\s+", " ", path.read_text(encoding="utf-8")) for path in documents())
    figures = figures_the_readme_held()
    assert len(figures) >= 250
    missing = [figure for figure in figures if figure not in text]
    assert not missing, missing


def code_spans() -> list[tuple[str, str]]:
    """(document, text) of every inline code span and code block line in the README and the docs."""
    spans = []
    for path in documents():
        text = path.read_text(encoding="utf-8")
        spans += [(path.name, span) for span in re.findall(r"`([^`\n]+)`", text)]
        spans += [(path.name, line) for _, block in fenced_blocks(path) for line in block.splitlines()]
    return spans


def python_object_exists(dotted: str) -> bool:
    """`rlhf.a.b` or `rlhf.a:b`: the longest importable module, then attributes."""
    parts = dotted.replace(":", ".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def proto_name_exists(name: str) -> bool:
    """`rlhf.v1.Service`, `rlhf.v1.Message` or `rlhf.v1.Message.field` in the generated descriptors."""
    for module in pkgutil.iter_modules(rlhf.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"rlhf.v1.{module.name}")
    pool = descriptor_pool.Default()
    for find in (pool.FindServiceByName, pool.FindMessageTypeByName, pool.FindEnumTypeByName):
        try:
            find(name)
            return True
        except KeyError:
            pass
    message, _, field = name.rpartition(".")
    try:
        return field in pool.FindMessageTypeByName(message).fields_by_name
    except KeyError:
        return False


def test_every_module_object_and_proto_name_the_readme_and_the_docs_name_exists():
    """`rlhf.core.server`, `rlhf.toy.synthetic:ground_truth_rewards`, `rlhf.v1.WeightChunk.kind`: code moves
    and renames must carry the text with them."""
    pattern = r"(?<![\w./-])(rlhf(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?)"
    named = {(where, ref) for where, span in code_spans() for ref in re.findall(pattern, span)}
    named = {(where, ref) for where, ref in named if not ref.startswith("rlhf.io")}  # a Kubernetes label
    assert len(named) >= 30
    wrong = []
    for where, ref in sorted(named):
        exists = proto_name_exists(ref) if ref.startswith("rlhf.v1.") and ":" not in ref else python_object_exists(ref)
        if not exists:
            wrong.append(f"{where}: {ref}")
    assert not wrong, wrong


def test_every_repository_path_the_readme_and_the_docs_name_exists():
    pattern = r"(?<![\w./-])((?:services|benchmarks|tests|k8s|scripts|protos|docs)/[\w./*-]*)"
    named = {(where, ref.rstrip(".")) for where, span in code_spans() for ref in re.findall(pattern, span)}
    named = {(where, ref) for where, ref in named if not re.search(r"/[A-Z]+(/|$)", ref)}  # k8s/overlays/NAME
    assert len(named) >= 30
    missing = [f"{where}: {ref}" for where, ref in sorted(named) if not any(ROOT.glob(ref))]
    assert not missing, missing
