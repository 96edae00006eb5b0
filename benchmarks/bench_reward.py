"""Reward service throughput against in-process batched scoring measured in the same run.

    .venv/bin/python benchmarks/bench_reward.py                                 # tiny model (2 x 128)
    .venv/bin/python benchmarks/bench_reward.py --layers 4 --hidden 256 --heads 8  # a bigger one

1. Baseline: items/s of in-process batched forward passes (RewardScorer.forward on pre-tokenized
   items, sorted by length) at batch sizes 8..256; the best is "in-process batched".
2. `rlhf serve reward` (a separate process, dynamic batching on) under 1, 8 and 64 concurrent
   clients, each sending single-item Score requests back to back. The clients are grpc.aio
   channels in one separate load-generating process.
3. The same server with dynamic batching off (--max-batch-size 1) under 64 clients.
4. The cost of gRPC itself: 64 clients calling the server's health Check (no model). The load
   generator, the server and the model share this machine's cores, so with a call costing H's
   share and an item costing B's (B: in-process batched), no server can pass H / (H + B) of B: the
   script prints that ceiling next to the measured ratio.

Targets: 64 clients >= 0.9x in-process batched, and >= 3x batching off.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rlhf.toy.processes import ServiceProcess  # noqa: E402
from rlhf.toy.synthetic import make_prompt, make_response, topic_of  # noqa: E402


def synthetic_items(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        prompt = make_prompt(rng)
        items.append((prompt, make_response(rng, topic_of(prompt), on_topic=0.5)))
    return items


def make_reward_model(workdir: Path, layers: int, hidden: int, heads: int) -> Path:
    """A tiny LM of the given size with a one-output head, saved as a reward-model dir."""
    import torch

    from rlhf.core.modeling import load_tokenizer
    from rlhf.core.reward_model import load_sequence_classifier
    from rlhf.toy.tiny import TinyModelConfig, make_tiny_model

    lm = make_tiny_model(workdir / "lm", TinyModelConfig(n_layer=layers, n_embd=hidden, n_head=heads))
    tokenizer = load_tokenizer(lm)
    model = load_sequence_classifier(lm, tokenizer, torch.device("cpu"), torch.float32)
    model.save_pretrained(workdir / "rm")
    tokenizer.save_pretrained(workdir / "rm")
    return workdir / "rm"


def in_process_items_per_s(model_dir: Path, items, device: str, seconds: float) -> dict[int, float]:
    """Items/s of RewardScorer.score_batch (batched tokenizing + forward: the server's work per batch)
    at each batch size, on length-sorted items."""
    from rlhf.core.batching import by_length_chunks
    from rlhf.core.reward_model import RewardScorer

    scorer = RewardScorer.load(model_dir, device=device)
    rates = {}
    for size in (1, 8, 16, 32, 64, 128, 256):
        batches = [[items[i] for i in chunk] for chunk in by_length_chunks([len(p) + len(r) for p, r in items], size)]
        scorer.score_batch(batches[0])  # warm-up for this shape
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for batch in batches:
                scorer.score_batch(batch)
                done += len(batch)
        rates[size] = done / (time.perf_counter() - start)
    return rates


async def _clients(target: str, items, clients: int, seconds: float, trivial: bool) -> float:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from rlhf.v1 import reward_pb2, reward_pb2_grpc

    if trivial:  # the cheapest RPC the server has: what gRPC itself costs per call on this machine
        requests = [health_pb2.HealthCheckRequest()]
    else:
        requests = [reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=p, response=r)]) for p, r in items]
    channels = [grpc.aio.insecure_channel(target) for _ in range(clients)]
    done = [0] * clients
    phase = {"measuring": False, "stop": False}

    async def client(i: int) -> None:
        call = (
            health_pb2_grpc.HealthStub(channels[i]).Check
            if trivial
            else reward_pb2_grpc.RewardScoringStub(channels[i]).Score
        )
        n = i
        while not phase["stop"]:
            await call(requests[n % len(requests)], timeout=60)
            n += clients
            done[i] += phase["measuring"]

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(min(2.0, seconds / 2))  # connect and warm up
    phase["measuring"] = True
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    phase["measuring"], elapsed = False, time.perf_counter() - start
    phase["stop"] = True
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    return sum(done) / elapsed


def _client_process(target: str, items, clients: int, seconds: float, trivial: bool, results) -> None:
    results.put(asyncio.run(_clients(target, items, clients, seconds, trivial)))


def service_items_per_s(target: str, items, clients: int, seconds: float, trivial: bool = False) -> float:
    """`clients` concurrent single-item callers, run in their own process so they don't share our GIL."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_client_process, args=(target, items, clients, seconds, trivial, results))
    process.start()
    rate = results.get(timeout=seconds + 120)
    process.join()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="the service's batch limit (default: the best in-process batch size)",
    )
    parser.add_argument("--instances", type=int, default=1, help="the service's model worker processes")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="the service's batching delay")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each measurement runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, here and in the server (default: torch's choice); 1 is steadier on a busy machine",
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server processes

    items = synthetic_items(2048)
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-reward-") as tmp:
        workdir = Path(tmp)
        model_dir = make_reward_model(workdir, args.layers, args.hidden, args.heads)
        print(
            f"reward model: {args.layers} layers x {args.hidden} hidden, device {args.device}, "
            f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, synthetic items (~20 tokens)"
        )
        rates = in_process_items_per_s(model_dir, items, args.device, args.seconds / 2)
        for size, rate in rates.items():
            print(f"  in-process forward, batch {size:3d}:           {rate:9.0f} items/s")
        best_size = max(rates, key=rates.get)
        baseline = rates[best_size]
        print(f"  in-process batched (best, batch {best_size}):     {baseline:9.0f} items/s")

        def serve(max_batch_size: int) -> list[str]:
            return [
                "serve",
                "reward",
                "--model",
                str(model_dir),
                "--device",
                args.device,
                "--instances",
                str(args.instances),
                "--max-batch-size",
                str(max_batch_size),
                "--max-wait-ms",
                str(args.max_wait_ms),
            ]

        served, max_batch_size = {}, args.max_batch_size or best_size
        print(
            f"  service: --max-batch-size {max_batch_size} --max-wait-ms {args.max_wait_ms} "
            f"--instances {args.instances}"
        )
        with ServiceProcess(serve(max_batch_size), log_path=workdir / "reward.log", name="reward") as server:
            for clients in (1, 8, 64):
                served[clients] = service_items_per_s(server.target, items, clients, args.seconds)
                print(
                    f"  service, {clients:2d} concurrent clients:         {served[clients]:9.0f} items/s  "
                    f"({served[clients] / baseline:.2f}x in-process)"
                )
            rpc_ceiling = service_items_per_s(server.target, items, 64, args.seconds, trivial=True)
        with ServiceProcess(serve(1), log_path=workdir / "reward-unbatched.log", name="reward") as server:
            unbatched = service_items_per_s(server.target, items, 64, args.seconds)
        print(
            f"  service, 64 clients, batching off:    {unbatched:9.0f} items/s  "
            f"({unbatched / baseline:.2f}x in-process)"
        )
        # Clients, server and model share this machine's cores. If one call costs the CPU of a health
        # check and one item the CPU of an in-process item, no server can pass this fraction of it.
        ceiling = rpc_ceiling / (rpc_ceiling + baseline)
        print(
            f"  64 clients, health Check (no model):  {rpc_ceiling:9.0f} calls/s  -> with the model's CPU per item, "
            f"the most any server here can reach is {ceiling:.2f}x in-process; 64 clients reach "
            f"{served[64] / baseline / ceiling:.2f} of that"
        )
        print(
            f"ratios: 64 clients / in-process batched = {served[64] / baseline:.2f} (target >= 0.90); "
            f"64 clients / batching off = {served[64] / unbatched:.2f} (target >= 3.00)"
        )


if __name__ == "__main__":
    sys.exit(main())
