"""Every `rlhf label` setting, once; the CLI flags and their --help come from the field docstrings
(rlhf.core.flags)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 8080
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class LabelConfig:
    """`rlhf label`: a page where people rank K responses per prompt."""

    prompts: str | None = None
    """JSONL with a "prompt" string per line (required unless --candidates gives the prompts)"""
    out: str | None = None
    """rankings JSONL to append to (required); a restart resumes from it"""
    policy: str | None = None
    """policy service HOST:PORT to sample the K responses from (or give --candidates)"""
    candidates: str | None = None
    """JSONL of {"prompt": ..., "responses": [K strings]} to rank instead of sampling"""
    k: int = 4
    """responses sampled per prompt from --policy"""
    max_new_tokens: int = 64
    """longest sampled response, in tokens"""
    temperature: float = 1.0
    """sampling temperature of --policy"""
    seed: int = 0
    """base sampling seed: prompt i is sampled with seed + i (recorded with each ranking)"""
    host: str = "127.0.0.1"
    """address to bind; any address beyond loopback needs --auth-token-file"""
    port: int = DEFAULT_PORT
    """HTTP port of the page"""
    annotator: str | None = None
    """name of the one annotator of a local session: the page opens straight on the first prompt"""
    overlap: int = 1
    """annotators who rank each prompt (above 1, `rlhf label stats` measures their agreement)"""
    ties: bool = False
    """let annotators rank responses as equally good"""
    auth_token_file: str | None = None
    """file of annotators, one "NAME TOKEN" per line; each must give their token on the page"""


@dataclass
class ImportConfig:
    """`rlhf data import`: another labelling tool's rankings as K-wise rankings JSONL (the tool itself is
    --from, one of rlhf.label.imports.IMPORTERS)."""

    out: str | None = None
    """rankings JSONL to write (required)"""
    prompt_field: str = "prompt"
    """the task data (Label Studio) or record field (Argilla) that holds the prompt"""
