"""Commands: `rlhf serve policy`, `rlhf generate`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.core.types import GenerationParams
from rlhf.policy.config import DEFAULT_PORT, PolicyServiceConfig


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    serve = commands.serve.add_parser("policy", help="serve pi_RL: Generate, UpdateWeights, GetModelInfo")
    add_config_arguments(serve, PolicyServiceConfig)
    ServerOptions.add_arguments(serve, default_port=DEFAULT_PORT)
    serve.set_defaults(func=_serve)

    gen = commands.top.add_parser("generate", help="sample responses from a policy service")
    gen.add_argument("--target", required=True, help="policy service HOST:PORT")
    gen.add_argument("--prompt", required=True, help="prompt text (tokenized by the service)")
    add_config_arguments(gen, GenerationParams)
    gen.add_argument("--json", action="store_true", help="one JSON object per sample")
    ClientOptions.add_arguments(gen)
    gen.set_defaults(func=_generate)


def _serve(args: argparse.Namespace) -> int:
    from rlhf.core.batching import check_batch_settings
    from rlhf.core.server import ServerOptions, serve
    from rlhf.policy.service import PolicyService, keep_freed_memory

    config = config_from_args(args, PolicyServiceConfig)
    check_batch_settings(config)
    config.learner_tls.check_tls_pair("learner-")
    keep_freed_memory()
    return serve(PolicyService(config), ServerOptions.from_args(args))


def _generate(args: argparse.Namespace) -> int:
    import json

    import grpc

    from rlhf.core.client import ClientOptions, describe_rpc_error
    from rlhf.core.errors import UserError
    from rlhf.policy.client import PolicyClient

    params = config_from_args(args, GenerationParams)
    with PolicyClient(args.target, ClientOptions.from_args(args)) as policy:
        try:
            samples = policy.generate([args.prompt], params)
        except grpc.RpcError as err:
            raise UserError(describe_rpc_error(err)) from None
    for sample in samples:
        if args.json:
            print(
                json.dumps(
                    {
                        "response": sample.response_text,
                        "prompt_token_ids": sample.prompt_token_ids,
                        "response_token_ids": sample.response_token_ids,
                        "logprobs": sample.logprobs,
                        "finish_reason": sample.finish_reason,
                        "weights_version": sample.weights_version,
                    }
                )
            )
        else:
            print(sample.response_text)
    return 0
