"""`rlhf label`: check the settings, load the items, and serve the page with uvicorn.

rlhf label --candidates candidates.jsonl --out rankings.jsonl --annotator ana
rlhf label --prompts prompts.jsonl --policy localhost:50052 --k 4 --out rankings.jsonl --overlap 2
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf.core.errors import UserError
from rlhf.label.config import LOOPBACK_HOSTS, LabelConfig

log = logging.getLogger(__name__)


def read_tokens(path: str) -> dict[str, str]:
    """token -> annotator name, from lines "NAME TOKEN" ("#" starts a comment)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read --auth-token-file {path}: {err.strerror}") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or len(fields[1]) < 16:
            raise UserError(f'{path}:{number}: expected "NAME TOKEN" with a token of at least 16 characters')
        name, token = fields
        if token in tokens:
            raise UserError(f"{path}:{number}: the token of {name} is also {tokens[token]}'s")
        tokens[token] = name
    if not tokens:
        raise UserError(f"--auth-token-file {path} names no annotator")
    return tokens


def check_config(config: LabelConfig) -> None:
    if not config.out:
        raise UserError("give --out FILE (the rankings JSONL to append to)")
    if config.host not in LOOPBACK_HOSTS and not config.auth_token_file:
        raise UserError(f"--host {config.host} is reachable beyond this machine: give --auth-token-file too")
    if config.overlap < 1:
        raise UserError(f"--overlap must be at least 1, got {config.overlap}")
    if config.k < 2:
        raise UserError(f"--k must be at least 2, got {config.k}")
    if config.annotator and config.auth_token_file:
        raise UserError("--annotator names the one local annotator; with --auth-token-file the tokens name them")


def policy_sampler(config: LabelConfig):
    """item -> (K responses, provenance), from one Generate call of the policy service per item."""
    import grpc

    from rlhf.core.client import describe_rpc_error
    from rlhf.core.types import GenerationParams
    from rlhf.label.app import ApiError
    from rlhf.policy.client import PolicyClient

    client = PolicyClient(config.policy)

    def sample(item) -> tuple[list[str], dict]:
        seed = config.seed + item.index
        params = GenerationParams(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=seed, n=config.k
        )
        try:
            samples = client.generate([item.prompt], params)
        except grpc.RpcError as err:
            raise ApiError(502, f"policy service: {describe_rpc_error(err)}") from None
        return [s.response_text for s in samples], {"weights_version": samples[0].weights_version, "seed": seed}

    return sample


def run(config: LabelConfig) -> int:
    import uvicorn

    from rlhf.label.app import build_app
    from rlhf.label.items import ItemQueue, load_items
    from rlhf.label.store import RankingStore

    check_config(config)
    tokens = read_tokens(config.auth_token_file) if config.auth_token_file else {}
    items = load_items(config)
    store = RankingStore(config.out)
    queue = ItemQueue(items, store, config.overlap, policy_sampler(config) if config.policy else None)
    app = build_app(config, queue, store, tokens)
    done = sum(store.count_by_item[i.id] >= config.overlap for i in items)
    print(f"rlhf label: {len(items)} prompts ({done} fully ranked) -> {config.out}")
    print(f"rlhf label: open http://{config.host}:{config.port}/", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
