"""Commands: `rlhf serve reference`, `rlhf logprobs`."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 50053


def register(commands) -> None:
    from rlhf.core.client import ClientOptions
    from rlhf.core.server import ServerOptions

    serve = commands.serve.add_parser("reference", help="serve the frozen SFT model pi_SFT: LogProbs, GetModelInfo")
    serve.add_argument("--model", required=True, help="causal LM dir to serve (the SFT model)")
    serve.add_argument("--max-batch-size", type=int, default=32, help="most pairs in one forward pass (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a request waits for a batch to fill")
    serve.add_argument("--max-items-per-request", type=int, default=1024, help="most pairs in one request")
    serve.add_argument(
        "--max-queue",
        type=int,
        default=16384,
        help="admission control: most pairs waiting for a batch; a request that would pass it "
        "is answered RESOURCE_EXHAUSTED at once (clients back off and retry)",
    )
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    serve.add_argument(
        "--dtype", default="float32", help="auto, float32, bfloat16 or float16 (default float32: the KL term needs it)"
    )
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
    from rlhf.core.server import ServerOptions, serve
    from rlhf.reference.service import ReferenceService, ReferenceServiceConfig

    if args.max_queue < args.max_items_per_request:
        from rlhf.core.errors import UserError

        raise UserError("--max-queue must be at least --max-items-per-request")
    config = ReferenceServiceConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_items_per_request=args.max_items_per_request,
        max_queue=args.max_queue,
    )
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
