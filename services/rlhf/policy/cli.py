"""Commands: `rlhf train sft`, `rlhf serve policy`, `rlhf generate`."""

from __future__ import annotations

import argparse
import os

DEFAULT_PORT = 50052


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    sft = commands.train.add_parser("sft", help="supervised fine-tuning on prompt-response pairs")
    sft.add_argument("--model", required=True, help="pretrained causal LM dir (any Hugging Face model dir)")
    sft.add_argument(
        "--data",
        required=True,
        help='JSONL, one {"prompt", "response"} per line ("completion" works); a {"text"} line is '
        "plain text, trained on every token (continued pretraining)",
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
    from rlhf.core.flags import add_config_arguments
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
    serve.add_argument("--model", required=True, help="causal LM dir to serve (usually the SFT model)")
    serve.add_argument(
        "--learner", default=None, help="learner HOST:PORT: pull its current weights at start (replicas added mid-run)"
    )
    serve.add_argument("--learner-auth-token-file", default=None, help="bearer token for the learner, if it wants one")
    env = os.environ.get
    serve.add_argument(
        "--learner-tls-ca",
        default=env("RLHF_TLS_CA"),
        help="CA of the learner's certificate: pull over TLS (env RLHF_TLS_CA)",
    )
    serve.add_argument(
        "--learner-tls-cert",
        default=env("RLHF_TLS_CLIENT_CERT"),
        help="client certificate for a learner that requires mTLS (env RLHF_TLS_CLIENT_CERT)",
    )
    serve.add_argument(
        "--learner-tls-key",
        default=env("RLHF_TLS_CLIENT_KEY"),
        help="client key for --learner-tls-cert (env RLHF_TLS_CLIENT_KEY)",
    )
    serve.add_argument(
        "--weights-stream-timeout",
        type=float,
        default=60.0,
        help="seconds a weight stream may go without a chunk before it is cut, the served weights "
        "untouched: an UpdateWeights push (DEADLINE_EXCEEDED) or the start-up GetWeights pull",
    )
    serve.add_argument("--max-batch-size", type=int, default=32, help="most samples decoded together (default 32)")
    serve.add_argument(
        "--max-wait-ms", type=float, default=50.0, help="longest a request waits for its batch to fill (default 50)"
    )
    serve.add_argument("--max-items-per-request", type=int, default=1024, help="most prompts x n in one request")
    serve.add_argument(
        "--max-queue",
        type=int,
        default=16384,
        help="admission control: most rows (prompts x n) waiting for a batch; a request that would "
        "pass it is answered RESOURCE_EXHAUSTED at once (clients back off and retry)",
    )
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    serve.add_argument(
        "--dtype",
        default="float32",
        help="auto, float32, bfloat16 or float16 (default float32: what the learner sends)",
    )
    ServerOptions.add_arguments(serve, default_port=DEFAULT_PORT)
    serve.set_defaults(func=_serve)

    gen = commands.top.add_parser("generate", help="sample responses from a policy service")
    gen.add_argument("--target", required=True, help="policy service HOST:PORT")
    gen.add_argument("--prompt", required=True, help="prompt text (tokenized by the service)")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="longest response")
    gen.add_argument("--min-new-tokens", type=int, default=0, help="no EOS before this many tokens")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    gen.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus sampling: sample from the likeliest tokens whose probabilities add up to this",
    )
    gen.add_argument("--top-k", type=int, default=0, help="0: off")
    gen.add_argument("--seed", type=int, default=None, help="same seed and weights give the same samples")
    gen.add_argument("--n", type=int, default=1, help="samples for the prompt")
    gen.add_argument("--ignore-eos", action="store_true", help="keep sampling after EOS")
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
    from rlhf.core.errors import UserError
    from rlhf.core.server import ServerOptions, serve
    from rlhf.policy.service import PolicyService, PolicyServiceConfig, keep_freed_memory

    if args.max_queue < args.max_items_per_request:
        raise UserError("--max-queue must be at least --max-items-per-request")
    keep_freed_memory()
    config = PolicyServiceConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_items_per_request=args.max_items_per_request,
        learner=args.learner,
        learner_auth_token_file=args.learner_auth_token_file,
        weights_stream_timeout=args.weights_stream_timeout,
        max_queue=args.max_queue,
        learner_tls_ca=args.learner_tls_ca,
        learner_tls_cert=args.learner_tls_cert,
        learner_tls_key=args.learner_tls_key,
    )
    if bool(config.learner_tls_cert) != bool(config.learner_tls_key):
        raise UserError("--learner-tls-cert and --learner-tls-key go together")
    return serve(PolicyService(config), ServerOptions.from_args(args))


def _generate(args: argparse.Namespace) -> int:
    import json

    import grpc

    from rlhf.core.client import ClientOptions, describe_rpc_error
    from rlhf.core.errors import UserError
    from rlhf.core.types import GenerationParams
    from rlhf.policy.client import PolicyClient

    params = GenerationParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        n=args.n,
        ignore_eos=args.ignore_eos,
        min_new_tokens=args.min_new_tokens,
    )
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
