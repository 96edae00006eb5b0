"""Commands: `rlhf train sft`, `rlhf serve policy`, `rlhf generate`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.core.types import GenerationParams
from rlhf.policy.config import DEFAULT_PORT, PolicyServiceConfig


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    sft = commands.train.add_parser("sft", help="supervised fine-tuning on prompt-response pairs")
    sft.add_argument("--model", required=True, help="pretrained causal LM dir (any Hugging Face model dir)")
    sft.add_argument(
        "--data",
        required=True,
        help='JSONL, one {"prompt", "response"} per line ("completion" works); a {"text"} line is '
        'plain text, trained on every token (continued pretraining); or conversations: {"messages": [...]}, '
        '{"prompt": [...], "completion": [...]}',
    )
    sft.add_argument("--out", required=True, help="model dir to write (with its tokenizer)")
    sft.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1: more overfits)")
    sft.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate, decayed linearly (default 5e-5)")
    sft.add_argument("--batch-size", type=int, default=16, help="pairs per step (default 16)")
    sft.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="longest prompt + response in tokens; longer pairs lose the start of the prompt",
    )
    sft.add_argument("--eval-fraction", type=float, default=0.05, help="share held out for the eval loss")
    sft.add_argument("--seed", type=int, default=0, help="seed of the held-out split, shuffling and dropout")
    sft.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    sft.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the gradient's norm to this")
    sft.add_argument(
        "--loss-on",
        choices=["assistant", "completion", "all"],
        help="where the loss falls (default: a response, a conversation's assistant turns, a completion)",
    )
    sft.add_argument("--chat-template", default="", help="Jinja chat template file, in place of the tokenizer's own")
    from rlhf.core.launch import add_launch_arguments
    from rlhf.core.training_options import TrainingOptions

    add_config_arguments(sft.add_argument_group("memory: precision, checkpointing, LoRA"), TrainingOptions)
    add_launch_arguments(sft)
    sft.set_defaults(func=_train_sft)

    from rlhf.training.config import DPOConfig

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
    from rlhf.core.flags import config_from_args
    from rlhf.training.sft import SFTConfig, train_sft

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
    from rlhf.core.flags import config_from_args
    from rlhf.training.config import DPOConfig
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
