"""Policy service throughput against in-process baselines measured in the same run.

    .venv/bin/python benchmarks/bench_policy.py                    # both parts (tiny model, GPT-2 124M)
    .venv/bin/python benchmarks/bench_policy.py --skip-weights     # generation only
    .venv/bin/python benchmarks/bench_policy.py --layers 4 --hidden 256 --heads 8   # a bigger policy
    .venv/bin/python benchmarks/bench_policy.py --threads 1        # steadier on a shared machine
    .venv/bin/python benchmarks/bench_policy.py --engine hf,vllm --skip-weights   # the engines side by side

1. Generation tokens/s of `rlhf serve policy` (a separate process) under 1, 8 and 32 concurrent
   clients, each asking for one prompt at a time, against in-process batched generation
   (LocalPolicy, all 32 prompts in one batch) on the same model. Target: 32 clients >= 0.9x.
   With --engine hf,vllm, each engine's service in turn (vllm from .venv-vllm or $RLHF_VLLM_PYTHON), and the
   time of a full and of a LoRA (rank 8, attention) push into it.
2. UpdateWeights MB/s for a GPT-2 config (124M parameters, random init, fp32) pushed to a policy
   service process, against raw loopback socket throughput (sendall/recv_into between two
   processes). Target: >= 1 GB/s, or >= 50% of the raw socket figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rlhf.core.types import GenerationParams  # noqa: E402
from rlhf.toy.processes import ServiceProcess, free_port  # noqa: E402
from rlhf.toy.synthetic import make_prompt  # noqa: E402

MB = 1e6


def prompts_for(count: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [make_prompt(rng) for _ in range(count)]


# -- generation --------------------------------------------------------------------------------


def in_process_tokens_per_s(policy, prompts: list[str], params: GenerationParams, seconds: float) -> float:
    """Batched LocalPolicy.generate over all prompts, back to back for `seconds`."""
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += sum(len(s.response_token_ids) for s in policy.generate(prompts, params))
    return tokens / (time.perf_counter() - start)


def service_tokens_per_s(
    target: str, prompts: list[str], params: GenerationParams, clients: int, seconds: float
) -> float:
    """`clients` threads, each sending one-prompt requests back to back for `seconds`."""
    from rlhf.policy.client import PolicyClient

    tokens = [0] * clients
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        with PolicyClient(target, timeout=600) as policy:
            policy.generate([prompts[i]], params)  # connect and warm up
            barrier.wait()
            while not stop.is_set():
                tokens[i] += sum(len(s.response_token_ids) for s in policy.generate([prompts[i]], params))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(tokens) / (time.perf_counter() - start)


def vllm_python() -> str:
    repo = Path(__file__).resolve().parents[1]
    python = Path(os.environ.get("RLHF_VLLM_PYTHON") or repo / ".venv-vllm" / "bin" / "python")
    if not python.exists():
        sys.exit(f"--engine vllm: no vLLM environment at {python} (make install builds it; or set RLHF_VLLM_PYTHON)")
    return str(python)


def policy_process(engine: str, serve: list[str], workdir: Path) -> ServiceProcess:
    """`rlhf serve policy` on `engine`: vllm runs from its own environment, eager, with a 256 MiB KV cache."""
    if engine == "hf":
        return ServiceProcess(serve, log_path=workdir / "policy.log", name="policy")
    flags = ["--engine", "vllm", "--vllm-enforce-eager", "--vllm-kv-cache-gb", "0.25"]
    command = [vllm_python(), "-m", "rlhf.cli"]
    return ServiceProcess(
        [*serve, *flags], log_path=workdir / "vllm.log", name="policy", command=command, start_timeout=900
    )


def push_seconds(target: str, model_dir: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of a full push (every tensor) and of a LoRA push (rank 8 on every attention c_attn)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.policy.client import PolicyClient

    full = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for name, tensor in full.items():
        if name.endswith("attn.c_attn.weight"):  # Conv1D: (in, out)
            module = name.removesuffix(".weight")
            lora[f"{module}.lora_A"] = 0.01 * torch.randn(8, tensor.shape[0], generator=generator)
            lora[f"{module}.lora_B"] = 0.01 * torch.randn(tensor.shape[1], 8, generator=generator)
    times: dict[str, list[float]] = {"full": [], "lora": []}
    with PolicyClient(target, timeout=600) as policy:
        for version in range(1, 2 * repeats + 1):
            kind, tensors = ("full", full) if version % 2 else ("lora", lora)
            start = time.perf_counter()
            policy.update_weights(tensors, version)
            times[kind].append(time.perf_counter() - start)
    return statistics.median(times["full"]), statistics.median(times["lora"])


def bench_generation(args, workdir: Path) -> None:
    """Per engine, rounds of (in-process, 1, 8, 32 clients), so a busy spell on the machine hits every figure
    alike; each figure is its best round."""
    import torch

    from rlhf.policy.local import LocalPolicy
    from rlhf.toy.tiny import TinyModelConfig, make_tiny_model

    model_dir = make_tiny_model(
        workdir / "policy", TinyModelConfig(n_layer=args.layers, n_embd=args.hidden, n_head=args.heads)
    )
    prompts = prompts_for(32)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0, ignore_eos=True)
    print(
        f"generation: {args.layers} layers x {args.hidden} hidden, 32 prompts, {args.max_new_tokens} new tokens "
        f"each (EOS ignored), {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
        f"best of {args.repeats} rounds of {args.seconds:.0f}s"
    )
    local = LocalPolicy(model_dir, device="cpu", max_batch_size=len(prompts))
    local.generate(prompts[:2], params)  # warm-up
    metrics_port = free_port()
    serve = [
        "serve",
        "policy",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--max-batch-size",
        "32",
        "--metrics-port",
        str(metrics_port),
    ]
    if args.max_wait_ms is not None:
        serve += ["--max-wait-ms", str(args.max_wait_ms)]
    for engine in args.engine.split(","):
        best = {"in-process": 0.0, 1: 0.0, 8: 0.0, 32: 0.0}
        rows_per_batch = {1: [0.0, 0.0], 8: [0.0, 0.0], 32: [0.0, 0.0]}  # rows, batches
        with policy_process(engine, serve, workdir) as server:
            for _ in range(args.repeats):
                local_rate = in_process_tokens_per_s(local, prompts, params, args.seconds)
                best["in-process"] = max(best["in-process"], local_rate)
                for clients in (1, 8, 32):
                    before = batch_totals(metrics_port)
                    rate = service_tokens_per_s(server.target, prompts, params, clients, args.seconds)
                    after = batch_totals(metrics_port)
                    best[clients] = max(best[clients], rate)
                    for i in (0, 1):
                        rows_per_batch[clients][i] += after[i] - before[i]
            full_s, lora_s = push_seconds(server.target, model_dir, args.repeats)
        baseline = best["in-process"]
        print(f"  [{engine}] in-process hf batched (32 prompts/batch): {baseline:9.0f} tokens/s")
        for clients in (1, 8, 32):
            rows, batches = rows_per_batch[clients]
            print(
                f"  [{engine}] service, {clients:2d} concurrent clients:          {best[clients]:9.0f} tokens/s  "
                f"({best[clients] / baseline:.2f}x in-process; {rows / max(batches, 1):.1f} rows per batch)"
            )
        print(f"  [{engine}] UpdateWeights, median of {args.repeats}: full {full_s:.3f} s, LoRA r8 {lora_s:.3f} s")
    print("  target (hf): 32 clients >= 0.90x in-process")


def batch_totals(metrics_port: int) -> tuple[float, float]:
    """(rows, batches) the policy service has run so far, from its Prometheus endpoint."""
    from urllib.request import urlopen

    text = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("rlhf_batch_size_sum", "rlhf_batch_size_count"):
            if line.startswith(name + '{service="policy"}'):
                values[name] = float(line.split()[-1])
    return values.get("rlhf_batch_size_sum", 0.0), values.get("rlhf_batch_size_count", 0.0)


# -- weights -----------------------------------------------------------------------------------


def _socket_sink(port_queue, total: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port_queue.put(server.getsockname()[1])
        conn, _ = server.accept()
        buffer = bytearray(4 * 1024 * 1024)
        view, received = memoryview(buffer), 0
        with conn:
            while received < total:
                n = conn.recv_into(view)
                if not n:
                    break
                received += n
            conn.sendall(b"k")


def raw_socket_mb_per_s(total: int, repeats: int) -> float:
    """Best of `repeats`: bytes sent over loopback TCP to another process, 4 MiB sendall calls."""
    payload = memoryview(os.urandom(4 * 1024 * 1024))
    rates = []
    ctx = multiprocessing.get_context("spawn")
    for _ in range(repeats):
        ports = ctx.Queue()
        sink = ctx.Process(target=_socket_sink, args=(ports, total))
        sink.start()
        with socket.create_connection(("127.0.0.1", ports.get(timeout=60))) as conn:
            start, sent = time.perf_counter(), 0
            while sent < total:
                conn.sendall(payload)
                sent += len(payload)
            conn.recv(1)  # the sink has it all
            rates.append(sent / (time.perf_counter() - start) / MB)
        sink.join()
    return max(rates)


def bench_update_weights(args, workdir: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.policy.client import PolicyClient
    from rlhf.toy.tiny import train_tokenizer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small: 12 layers, 768 hidden, 50257 vocab
    params = sum(p.numel() for p in model.parameters())
    model_dir = workdir / "gpt2"
    model.save_pretrained(model_dir)
    train_tokenizer(1024).save_pretrained(model_dir)  # the service wants a tokenizer; ids are not used here
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in state.values())
    print(
        f"\nUpdateWeights: GPT-2 config, {params / 1e6:.0f}M parameters, fp32, {size / MB:.0f} MB per push "
        f"({len(state)} tensors)"
    )
    raw = raw_socket_mb_per_s(1 << 30, args.repeats)
    print(f"  raw loopback socket (1 GiB, 4 MiB sends):  {raw:8.0f} MB/s")
    serve = ["serve", "policy", "--model", str(model_dir), "--device", "cpu", "--max-message-mb", "64"]
    with (
        ServiceProcess(serve, log_path=workdir / "gpt2.log", name="policy") as server,
        PolicyClient(server.target, timeout=600) as policy,
    ):
        times = []
        for version in range(1, args.repeats + 2):
            start = time.perf_counter()
            reply = policy.update_weights(state, version)
            times.append(time.perf_counter() - start)
            assert reply.weights_version == version and reply.bytes_received == size
        best, median = min(times[1:]), statistics.median(times[1:])  # the first push warms up
        print(
            f"  UpdateWeights, best of {args.repeats}:              {size / best / MB:8.0f} MB/s  "
            f"({size / best / MB / raw:.2f}x raw socket; median {size / median / MB:.0f} MB/s)"
        )
    print("  target: >= 1000 MB/s, or >= 0.50x raw socket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="policy model for the generation part")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=None, help="the service's batching window")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each measurement runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, here and in the servers (default: torch's choice); 1 is steadier on a busy machine",
    )
    parser.add_argument(
        "--engine", default="hf", help="the policy service's engine(s) for the generation part: hf, vllm or hf,vllm"
    )
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--skip-weights", action="store_true")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the server processes
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-policy-") as tmp:
        workdir = Path(tmp)
        if not args.skip_generation:
            bench_generation(args, workdir)
        if not args.skip_weights:
            bench_update_weights(args, workdir)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
