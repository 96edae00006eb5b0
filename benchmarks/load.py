"""Load and overload on the reward and policy services, as `rlhf serve` processes on the tiny model.

    .venv/bin/python benchmarks/load.py                      # 64 clients for 60 s, then 8x overload, each service
    .venv/bin/python benchmarks/load.py --seconds 20 --only reward

1. Load: 64 clients, each sending single-item requests back to back: calls, errors, p50 and p99 latency.
2. Overload with admission control on (`--max-queue`, set to the 64 clients' worth): 8x the clients (512),
   on plain channels without retries, so the server's own answers show. Every answer must be OK or
   RESOURCE_EXHAUSTED (no DEADLINE_EXCEEDED: a refused call is refused at once), and the server's peak RSS
   (VmHWM) must stay flat: it grows by less than 10% over its peak under the normal load.
Exits 1 if either overload check fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
CLIENTS, OVERLOAD, MAX_QUEUE = 64, 8, 64
PROMPT = "Human: Tell me about cats.\nAssistant:"


def make_models(root: Path) -> tuple[Path, Path]:
    """The tiny causal LM, and a reward model on it (random head)."""
    import torch

    from rlhf.core.modeling import load_tokenizer
    from rlhf.core.reward_model import load_sequence_classifier

    lm, rm = root / "tiny", root / "rm"
    subprocess.run(
        [sys.executable, "-m", "rlhf", "tiny-model", "--out", str(lm)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tokenizer = load_tokenizer(lm)
    load_sequence_classifier(lm, tokenizer, torch.device("cpu"), torch.float32).save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    return lm, rm


def request_for(service: str):
    """(stub method name, request) of one single-item call."""
    from rlhf.core.types import GenerationParams
    from rlhf.policy.convert import params_to_proto, prompts_to_proto
    from rlhf.v1 import policy_pb2, reward_pb2

    if service == "reward":
        return "Score", reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=PROMPT, response=" cats are kind.")])
    params = params_to_proto(GenerationParams(max_new_tokens=8))
    return "Generate", policy_pb2.GenerateRequest(prompts=prompts_to_proto([PROMPT]), params=params)


def drive(target: str, service: str, clients: int, seconds: float, timeout: float) -> tuple[Counter, list[float]]:
    """`clients` threads calling back to back for `seconds`, each on its own plain channel (no retries)."""
    import grpc

    from rlhf.v1 import policy_pb2_grpc, reward_pb2_grpc

    stub_class = {"reward": reward_pb2_grpc.RewardScoringStub, "policy": policy_pb2_grpc.PolicyInferenceStub}[service]
    method, request = request_for(service)
    codes: Counter = Counter()
    latencies: list[float] = []
    lock, deadline = threading.Lock(), time.monotonic() + seconds

    def client():
        with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
            call = getattr(stub_class(channel), method)
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    call(request, timeout=timeout)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                elapsed = time.perf_counter() - start
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        latencies.append(elapsed)
                if code == "RESOURCE_EXHAUSTED":
                    time.sleep(0.01)  # a refused client tries again soon (the project's clients back off longer)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes, latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--only", nargs="+", choices=["reward", "policy"], default=["reward", "policy"])
    args = parser.parse_args()

    from rlhf.core.resources import peak_rss
    from rlhf.toy.processes import ServiceProcess

    failed = False
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        lm, rm = make_models(Path(tmp))
        for service in args.only:
            model = rm if service == "reward" else lm
            command = [
                "serve",
                service,
                "--model",
                str(model),
                "--device",
                "cpu",
                "--max-queue",
                str(MAX_QUEUE),
                "--max-items-per-request",
                "8",
            ]
            with ExitStack() as stack:
                server = stack.enter_context(ServiceProcess(command, log_path=Path(tmp) / f"{service}.log"))
                codes, latencies = drive(server.target, service, CLIENTS, args.seconds, timeout=30)
                normal_peak = peak_rss(server.proc.pid)
                errors = sum(n for code, n in codes.items() if code != "OK")
                print(
                    f"{service}: {CLIENTS} clients for {args.seconds:g} s: {sum(codes.values())} calls, "
                    f"{errors} errors ({dict(codes)}), p50 {1000 * percentile(latencies, 50):.0f} ms, "
                    f"p99 {1000 * percentile(latencies, 99):.0f} ms; peak RSS {normal_peak / 2**20:.0f} MiB",
                    flush=True,
                )
                clients = OVERLOAD * CLIENTS
                codes, latencies = drive(server.target, service, clients, args.seconds, timeout=30)
                overload_peak = peak_rss(server.proc.pid)
                growth = overload_peak / normal_peak - 1
                only_ok_or_refused = set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
                flat = growth < 0.10
                failed |= not (only_ok_or_refused and flat)
                print(
                    f"{service}: {clients} clients (8x) with --max-queue {MAX_QUEUE}: {dict(codes)}; p50 of the "
                    f"served {1000 * percentile(latencies, 50):.0f} ms, "
                    f"p99 {1000 * percentile(latencies, 99):.0f} ms; "
                    f"peak RSS {overload_peak / 2**20:.0f} MiB ({growth:+.1%}); only OK or RESOURCE_EXHAUSTED: "
                    f"{'yes' if only_ok_or_refused else 'NO'}; memory flat (< +10%): {'yes' if flat else 'NO'}",
                    flush=True,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
