"""The distributed learner at 1 and 2 ranks: per-rank memory and step time, side by side.

    .venv/bin/python benchmarks/bench_distributed.py                      # 12 layers x 768 (86M), CPU, gloo
    .venv/bin/python benchmarks/bench_distributed.py --layers 4 --hidden 256 --steps 4 --json out.json

`rlhf train ppo` runs through the services (two policy replicas, as processes) with the same seed and global
batch, once as one process (the baseline) and once as `--nproc-per-node 2` (torchrun, gloo, FSDP2). Each rank
reports the bytes of its own parameters and optimizer state (its FSDP2 shards), its peak resident set, and each
step's time; the figures are the largest rank's. Target (the distributed-learner issue): at 2 ranks, parameter
and optimizer bytes per rank about half of 1 rank's. Step time on one 2-core machine is no speed-up figure: the
two ranks and the services share the cores, and gloo's collectives go through memory copies.

On a CPU, glibc keeps freed blocks of a few MB in its heap (its mmap threshold grows after the first frees), and
FSDP2 allocates and frees a whole block's gathered weights and gradients at every forward and backward: the peak
resident set then shows the heap's high-water mark, not what the tensors need. `--mmap-threshold BYTES` (default
1 MiB; 0 keeps glibc's default) sets MALLOC_MMAP_THRESHOLD_ for both runs, so large blocks go back to the system
when freed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_memory import make_inputs  # noqa: E402 - this folder's own module

HALF_TARGET = 0.6  # "about half": at most 0.6x of 1 rank's bytes (the unsharded buffers stay whole)


def learner(inputs: dict, targets: dict, out: Path, ranks: int, args) -> list[dict]:
    """One run of `rlhf train ppo` at `ranks` ranks; its metrics.jsonl rows."""
    from rlhf.toy.processes import RLHF_COMMAND

    command = [
        *RLHF_COMMAND,
        "--log-level",
        "WARNING",
        "train",
        "ppo",
        "--model",
        str(inputs["model"]),
        "--value-model",
        str(inputs["model"]),
        "--policy",
        targets["policy"],
        "--reward",
        targets["reward"],
        "--reference",
        targets["reference"],
        "--prompts",
        str(inputs["prompts"]),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-new-tokens",
        "16",
        "--ppo-epochs",
        "1",
        "--num-minibatches",
        "2",
        "--port",
        "0",
        "--save-every",
        "1000",
        "--device",
        args.device,
        "--seed",
        "0",
        "--nproc-per-node",
        str(ranks),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summary(rows: list[dict]) -> dict[str, float]:
    later = rows[1:] or rows  # step 1 also warms up
    return {
        "parameters_gb": rows[-1]["memory/parameters_gb"],
        "optimizer_gb": rows[-1]["memory/optimizer_gb"],
        "peak_rss_gb": rows[-1]["memory/peak_rss_gb"],
        "step_s": statistics.median(r["time/step"] for r in later),
        "update_s": statistics.median(r["time/update"] for r in later),
        "weight_sync_s": statistics.median(r["time/weight_sync"] for r in later),
        "loss/policy": rows[0]["loss/policy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=1 << 20,
        help="MALLOC_MMAP_THRESHOLD_ for the learners (0: glibc's default)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from rlhf.toy.processes import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        inputs = make_inputs(root, args.layers, args.hidden, args.heads)
        targets: dict[str, str] = {}
        for name in ("policy", "policy", "reward", "reference"):  # a replica per rank: the same samples at 1 and 2
            proc = ServiceProcess(
                ["serve", name, "--model", str(inputs["model"]), "--device", args.device],
                name=name,
                env={"OMP_NUM_THREADS": "1"},
            )
            target = stack.enter_context(proc).target
            targets[name] = f"{targets[name]},{target}" if name in targets else target
        print(
            f"model: GPT-2 {args.layers} x {args.hidden}; PPO with a critic, {args.steps} steps of "
            f"{args.batch_size} prompts; device {args.device}; figures of the largest rank; glibc mmap threshold "
            f"{args.mmap_threshold or 'default'}",
            flush=True,
        )
        results = {ranks: summary(learner(inputs, targets, root / f"ranks-{ranks}", ranks, args)) for ranks in (1, 2)}
    one, two = results[1], results[2]
    print(f"{'':<26}{'1 rank':>10}{'2 ranks':>10}{'ratio':>8}")
    for key, unit in (
        ("parameters_gb", "GB"),
        ("optimizer_gb", "GB"),
        ("peak_rss_gb", "GB"),
        ("step_s", "s"),
        ("update_s", "s"),
        ("weight_sync_s", "s"),
    ):
        print(f"{key + ' (' + unit + ')':<26}{one[key]:>10.3f}{two[key]:>10.3f}{two[key] / one[key]:>8.2f}x")
    print(f"step 1 loss/policy (the same update): 1 rank {one['loss/policy']:.7f}, 2 ranks {two['loss/policy']:.7f}")
    for key in ("parameters_gb", "optimizer_gb"):
        share = two[key] / one[key]
        print(
            f"{key} per rank at 2 ranks: {share:.2f}x of 1 rank's (target <= {HALF_TARGET}): "
            f"{'met' if share <= HALF_TARGET else 'missed'}"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
