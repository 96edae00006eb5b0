"""Long fuzz runs against every RPC of every service: generated requests and raw byte mutations.

    .venv/bin/python benchmarks/fuzz.py                  # 10,000 inputs per service
    .venv/bin/python benchmarks/fuzz.py --inputs 500 --only reward

The policy, reference and reward services run as separate processes (`rlhf serve ...`, the tiny model; the
reward serves a function, so its batches are cheap); the learner's control API runs in this process, on a
finished run with published weights. Inputs are spread evenly over each service's RPCs, half generated from
the request descriptors (tests/fuzzing.py) and half byte mutations. After every input the service must still
answer. Prints the status codes seen per service; exits 1 on any UNKNOWN or any server exit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fuzz_method(channel, service, method, alive, examples: int, codes: Counter) -> None:
    """`examples` inputs to one RPC, each followed by a liveness call; counts the status codes into `codes`."""
    import grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests import fuzzing

    inputs = st.one_of(
        fuzzing.messages(method.input_type).map(lambda m: m.SerializeToString()), fuzzing.mutated(method.input_type)
    )

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=inputs)
    def run(payload):
        codes[fuzzing.call(channel, service, method, payload).name] += 1
        assert fuzzing.call(channel, service, alive, b"") == grpc.StatusCode.OK, "stopped serving"

    run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per service")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["policy", "reference", "reward", "learner"],
        default=["policy", "reference", "reward", "learner"],
    )
    args = parser.parse_args()

    import grpc

    from rlhf.core.server import ServerOptions, ServerThread
    from rlhf.toy.processes import ServiceProcess
    from tests.core.test_fuzz import SERVICES, make_services

    failures = 0
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run(
            [sys.executable, "-m", "rlhf", "tiny-model", "--out", str(model)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        limits = ["--max-items-per-request", "8", "--device", "cpu"]
        commands = {
            "policy": ["serve", "policy", "--model", str(model), "--weights-stream-timeout", "5", *limits],
            "reference": ["serve", "reference", "--model", str(model), *limits],
            "reward": [
                "serve",
                "reward",
                "--function",
                "rlhf.toy.synthetic:ground_truth_rewards",
                "--max-items-per-request",
                "8",
            ],
        }
        processes, targets = {}, {}
        for name in args.only:
            if name == "learner":
                learner = make_services(model, Path(tmp) / "learner")["learner"]
                targets[name] = f"127.0.0.1:{stack.enter_context(ServerThread(learner, ServerOptions(port=0)))}"
            else:
                processes[name] = stack.enter_context(
                    ServiceProcess(commands[name], log_path=Path(tmp) / name, name=name)
                )
                targets[name] = processes[name].target
        for name in args.only:
            service = SERVICES[name]
            alive = service.methods_by_name["GetStatus" if name == "learner" else "GetModelInfo"]
            per_method = max(1, args.inputs // (2 * len(service.methods)))
            codes: Counter[str] = Counter()
            start = time.perf_counter()
            with grpc.insecure_channel(targets[name]) as channel:
                for method in service.methods:
                    try:
                        fuzz_method(channel, service, method, alive, 2 * per_method, codes)
                    except AssertionError as err:
                        print(f"{name} {method.name}: {err}")
                        failures += 1
            exited = name in processes and processes[name].proc.poll() is not None
            unknown = codes.get("UNKNOWN", 0)
            failures += unknown + int(exited)
            shown = ", ".join(f"{code} {count}" for code, count in codes.most_common())
            print(
                f"{name:<9} {sum(codes.values()):>6} inputs in {time.perf_counter() - start:6.1f} s: {shown}; "
                f"UNKNOWN {unknown}; server exited: {'yes' if exited else 'no'}",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
