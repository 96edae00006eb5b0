"""Commands: `rlhf train sft`, `rlhf serve policy`, `rlhf generate`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.core.launch import add_launch_arguments
from rlhf.core.types import GenerationParams
from rlhf.policy.config import DEFAULT_PORT, PolicyServiceConfig
from rlhf.training.config import DPOConfig, SFTConfig


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    sft = commands.train.add_parser("sft", help="supervised fine-tuning on prompt-response pairs")
    add_config_arguments(sft, SFTConfig)
    add_launch_arguments(sft)
    sft.set_defaults(func=_train_sft)

    dpo = commands.train.add_parser(
        "dpo",
        help="direct alignment on preference rankings: DPO, cDPO or IPO (no reward model, no RL)",
        description="Direct preference optimization from the SFT model: K-wise rankings expand to their C(K,2) "
        "comparisons; log pi_ref comes once per (prompt, response) from --reference or a frozen copy of --model.",
    )
    add_config_arguments(dpo, DPOConfig)
    dpo.set_defaults(func=_train_dpo)

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


def _train_sft(args: argparse.Namespace) -> int:
    from rlhf.core.distributed import is_main_process
    from rlhf.training.sft import train_sft

    result = train_sft(config_from_args(args, SFTConfig))
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    print(
        f"eval loss (response tokens, {result.eval_examples} held-out pairs): "
        f"{result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}"
    )
    print(f"wrote {result.out}")
    return 0


def _train_dpo(args: argparse.Namespace) -> int:
    from rlhf.training.dpo import train_dpo

    result = train_dpo(config_from_args(args, DPOConfig))
    if result.eval_accuracy_after is not None:
        print(
            f"held-out preference accuracy (implicit reward, {result.eval_comparisons} comparisons): "
            f"{result.eval_accuracy_before:.4f} -> {result.eval_accuracy_after:.4f}; "
            f"loss {result.eval_loss_after:.4f}"
        )
    print(f"wrote {result.out}")
    return 0


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
