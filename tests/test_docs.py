"""The documentation site (mkdocs.yml, docs/): every page is in the nav, it builds offline, and
`mkdocs build --strict` passes (no dead link or anchor, no page left out)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import hang_guard

ROOT = Path(__file__).resolve().parents[1]


def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def nav_pages(nav) -> list[str]:
    """Every page file the nav names, at any depth."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def test_every_docs_page_is_in_the_nav_once():
    pages = nav_pages(config()["nav"])
    assert len(pages) == len(set(pages))
    assert sorted(pages) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert {"index.md", "memory.md", "learner.md", "benchmarks.md", "cli.md", "limits.md"} <= set(pages)


def test_the_site_fetches_nothing():
    """No plugin that downloads at build time (material's privacy and social), no web fonts at view time."""
    settings = config()
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in settings.get("plugins", [])]
    assert not {"privacy", "social", "material/privacy", "material/social"} & set(plugins)
    assert settings["theme"]["font"] is False


def test_the_site_builds_with_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "memory.html").exists()
