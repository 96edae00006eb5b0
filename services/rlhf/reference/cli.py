"""Commands: `rlhf serve reference`, `rlhf logprobs`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.reference.config import DEFAULT_PORT, ReferenceServiceConfig


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    serve = commands.serve.add_parser("reference", help="serve the frozen SFT model pi_SFT: LogProbs, GetModelInfo")
    add_config_arguments(serve, ReferenceServiceConfig)
    ServerOptions.add_arguments(serve, default_port=DEFAULT_PORT)
    serve.set_defaults(func=_serve)

    lp = commands.top.add_parser("logprobs", help="per-token log-probs of a response from a reference service")
    lp.add_argument("--target", required=True, help="reference service HOST:PORT")
    lp.add_argument("--tokenizer", required=True, help="model dir whose tokenizer the service uses")
    lp.add_argument("--prompt", required=True)
    lp.add_argument("--response", required=True, help="response text; EOS is appended, as in every stage")
    lp.add_argument("--json", action="store_true", help="print one JSON object")
    ClientOptions.add_arguments(lp)
    lp.set_defaults(func=_logprobs)


def _serve(args: argparse.Namespace) -> int:
    from rlhf.core.batching import check_batch_settings
    from rlhf.core.server import ServerOptions, serve
    from rlhf.reference.service import ReferenceService

    config = config_from_args(args, ReferenceServiceConfig)
    check_batch_settings(config)
    return serve(ReferenceService(config), ServerOptions.from_args(args))


def _logprobs(args: argparse.Namespace) -> int:
    import json

    import grpc

    from rlhf.core.client import ClientOptions, describe_rpc_error
    from rlhf.core.errors import UserError
    from rlhf.core.modeling import load_tokenizer
    from rlhf.core.text import encode_prompt, encode_response
    from rlhf.reference.client import ReferenceClient

    tokenizer = load_tokenizer(args.tokenizer)
    prompt_ids, response_ids = encode_prompt(tokenizer, args.prompt), encode_response(tokenizer, args.response)
    with ReferenceClient(args.target, ClientOptions.from_args(args)) as reference:
        try:
            (logprobs,) = reference.logprobs([(prompt_ids, response_ids)])
        except grpc.RpcError as err:
            raise UserError(describe_rpc_error(err)) from None
    if args.json:
        print(json.dumps({"prompt_token_ids": prompt_ids, "response_token_ids": response_ids, "logprobs": logprobs}))
        return 0
    for token_id, logprob in zip(response_ids, logprobs, strict=True):
        print(f"{logprob:10.4f}  {token_id:>6}  {tokenizer.decode([token_id])!r}")
    print(f"{sum(logprobs):10.4f}  total over {len(logprobs)} tokens")
    return 0
