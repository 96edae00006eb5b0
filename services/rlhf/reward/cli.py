"""Reward commands: `rlhf serve reward`, `rlhf score`."""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.reward.config import DEFAULT_PORT, RewardServiceConfig

SCORE_CHUNK = 256  # --input lines scored per round trip


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    serve = commands.serve.add_parser("reward", help="serve a reward model, or a Python function (RewardScoring)")
    add_config_arguments(serve, RewardServiceConfig)
    ServerOptions.add_arguments(serve, default_port=DEFAULT_PORT)
    serve.set_defaults(func=_serve)

    score = commands.top.add_parser("score", help="score (prompt, response) pairs with a reward service")
    score.add_argument("--target", required=True, help="reward service, HOST:PORT")
    score.add_argument("--prompt", help="prompt text (with --response)")
    score.add_argument("--response", help="response text (with --prompt or --messages)")
    score.add_argument(
        "--messages",
        help='JSON file holding the prompt as a conversation, [{"role": "user", "content": ...}, ...] (with '
        "--response): the service renders it with its own chat template",
    )
    score.add_argument(
        "--input",
        help='JSONL with "prompt" and "response" per line ("-" for stdin); prints each line with "score" added; '
        "a prompt may be a list of messages",
    )
    ClientOptions.add_arguments(score)
    score.set_defaults(func=_score)


def _serve(args: argparse.Namespace) -> int:
    from rlhf.core.batching import check_batch_settings
    from rlhf.core.errors import UserError
    from rlhf.core.modeling import check_model_path
    from rlhf.core.server import ServerOptions, serve
    from rlhf.reward.service import RewardService

    config = config_from_args(args, RewardServiceConfig)
    if bool(config.model) == bool(config.function):
        raise UserError("give one of --model (a reward model dir) and --function (PKG.MODULE:FN)")
    if config.function:
        from rlhf.reward.function import load_reward_function

        load_reward_function(config.function)  # a bad spec fails here, in one line, before the server starts
    else:
        check_model_path(config.model)
    check_batch_settings(config)
    if config.instances < 1:
        raise UserError("--instances must be >= 1")
    return serve(RewardService(config), ServerOptions.from_args(args))


def _score(args: argparse.Namespace) -> int:
    import grpc

    from rlhf.core.client import ClientOptions, describe_rpc_error
    from rlhf.core.errors import UserError
    from rlhf.reward.client import RewardClient

    one = args.response is not None and (args.prompt is None) != (args.messages is None)
    if (args.input is None) != one:
        raise UserError("give either --prompt (or --messages) and --response, or --input FILE.jsonl")
    prompt = args.prompt if args.messages is None else _messages_file(args.messages)
    try:
        with RewardClient(args.target, ClientOptions.from_args(args)) as client:
            if args.input is None:
                print(f"{client.score([(prompt, args.response)])[0]:.6f}")
                return 0
            for rows in _jsonl_chunks(args.input):
                scores = client.score([(row["prompt"], row["response"]) for row in rows])
                for row, value in zip(rows, scores, strict=True):
                    print(json.dumps({**row, "score": value}, ensure_ascii=False))
    except grpc.RpcError as err:
        raise UserError(describe_rpc_error(err)) from None
    return 0


def _messages_file(path: str):
    from rlhf.core.chat import parse_conversation
    from rlhf.core.errors import UserError

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read --messages {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg})") from None
    return parse_conversation(value.get("messages") if isinstance(value, dict) else value, path, "messages")


def _jsonl_chunks(path: str):
    """Lists of up to SCORE_CHUNK rows, each checked for a prompt (text or messages) and a string response."""
    from rlhf.core.chat import parse_conversation
    from rlhf.core.errors import UserError

    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    with stream:
        numbered = ((n, line) for n, line in enumerate(stream, 1) if line.strip())
        while chunk := list(islice(numbered, SCORE_CHUNK)):
            rows = []
            for number, line in chunk:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
                if not (isinstance(row, dict) and isinstance(row.get("response"), str)):
                    raise UserError(f'{path}:{number}: needs a "prompt" and a string "response"')
                if not isinstance(row.get("prompt"), str):  # a conversation, checked here for a one-line error
                    parse_conversation(row.get("prompt"), f"{path}:{number}", "prompt")
                rows.append(row)
            yield rows
