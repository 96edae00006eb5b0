"""Peak memory of each training stage under each memory mode, on a model of a configurable size.

    .venv/bin/python benchmarks/bench_memory.py                          # 12 layers x 768 (86M parameters), CPU
    .venv/bin/python benchmarks/bench_memory.py --layers 24 --hidden 1024 --device cuda
    .venv/bin/python benchmarks/bench_memory.py --stages ppo --json out.json

The model is a GPT-2 made from a config with random weights and the tiny tokenizer (no download). Each
(stage, mode) runs in a fresh process, so its peak is its own:
- `sft`: two optimizer steps of `rlhf train sft` at batch 8;
- `rm`: two steps of `rlhf train rm` at 8 prompts per batch;
- `ppo`: one step of `rlhf train ppo` (batch 8, 16 new tokens) against the three services as processes, so
  the learner's figure holds pi_RL, the value model, their optimizer states and the weight push, and nothing
  of the services.
The figure is the peak resident set on CPU, and `torch.cuda.max_memory_allocated` on CUDA. For `ppo` it is
also given for the step alone, model loading left out: the learner's own memory/step_peak_rss_gb (on CPU,
loading a float32 checkpoint in bfloat16 maps the file's pages while it converts them). The modes: fp32
full, bf16-mixed full, bf16-mixed + gradient checkpointing, and LoRA (r 8, every attention and MLP projection)
+ bf16-true + gradient checkpointing. Targets (the model-sizes issue): LoRA + bf16-true + checkpointing at
most 1/5 of fp32 full for the learner, bf16-mixed + checkpointing below fp32 full. It also prints the bytes of
a LoRA r 8 weight push against a full one (target: at most 2%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = {
    "fp32 full": [],
    "bf16-mixed full": ["--precision", "bf16-mixed"],
    "bf16-mixed + checkpointing": ["--precision", "bf16-mixed", "--gradient-checkpointing"],
    "LoRA r8 + bf16-true + checkpointing": [
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--precision",
        "bf16-true",
        "--gradient-checkpointing",
    ],
}
LORA_SHARE_TARGET, BF16_TARGET = 1 / 5, 1.0
PUSH_SHARE_TARGET = 0.02


def peak() -> dict[str, float]:
    import torch

    from rlhf.core.resources import peak_rss

    figures = {"rss_gb": peak_rss() / 2**30}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


def worker(stage: str, argv: list[str]) -> None:
    """In a fresh process: one stage through the CLI's own code, then its peak as one JSON line. The stage
    "baseline" only imports what a stage imports (torch, transformers, peft, grpc) and runs nothing."""
    import logging

    from rlhf.cli import main

    if stage == "baseline":
        import grpc  # noqa: F401
        import peft  # noqa: F401
        import transformers  # noqa: F401

        import rlhf.core.training  # noqa: F401
        import rlhf.learner.loop  # noqa: F401

        print("PEAK " + json.dumps(peak()), flush=True)
        return
    logging.disable(logging.WARNING)
    code = main(["--log-level", "ERROR", "train", stage, *argv])
    if code != 0:
        raise SystemExit(f"{stage} failed with exit code {code}")
    figures = peak()
    if stage == "ppo":
        # The learner resets VmHWM at each step's start to log the step's own peak (memory/step_peak_rss_gb),
        # and keeps the whole process's, loading included, as memory/peak_rss_gb: the process peak is the
        # larger of that and what VmHWM holds now (the final save came after the last step).
        metrics = [
            json.loads(line)
            for line in (Path(argv[argv.index("--out") + 1]) / "metrics.jsonl").read_text().splitlines()
        ]
        figures["rss_gb"] = max(figures["rss_gb"], max(m["memory/peak_rss_gb"] for m in metrics))
        if "memory/step_peak_rss_gb" in metrics[-1]:
            figures["step_rss_gb"] = metrics[-1]["memory/step_peak_rss_gb"]
    print("PEAK " + json.dumps(figures), flush=True)


def run_worker(stage: str, argv: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--worker", stage, "--", *argv], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{stage} {argv}: failed\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][5:])


def make_inputs(root: Path, layers: int, hidden: int, heads: int) -> dict[str, Path]:
    from rlhf.toy.synthetic import write_task
    from rlhf.toy.tiny import TinyModelConfig, make_tiny_model

    model = root / "model"
    make_tiny_model(model, TinyModelConfig(n_layer=layers, n_embd=hidden, n_head=heads))
    files = write_task(root / "data")
    small = {}
    for name, rows in (("sft", 16), ("preferences", 16)):
        lines = Path(files[name]).read_text().splitlines()[:rows]
        small[name] = root / f"{name}-small.jsonl"
        small[name].write_text("\n".join(lines) + "\n")
    return {"model": model, "prompts": Path(files["prompts"]), **small}


def push_share(model_dir: Path) -> tuple[int, int]:
    """Bytes of a LoRA r 8 push (every attention and MLP projection) and of a full push, float32."""
    from transformers import AutoModelForCausalLM

    from rlhf.core.training import TrainingOptions, lora_factors, prepare_model

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    full = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    factors = lora_factors(prepare_model(model, TrainingOptions(lora_r=8, lora_alpha=16), "causal-lm"))
    return sum(t.numel() * t.element_size() for t in factors.values()), full


def stage_args(stage: str, inputs: dict, out: Path, device: str, targets: dict | None) -> list[str]:
    common = ["--device", device, "--out", str(out)]
    if stage == "sft":
        return [
            *common,
            "--model",
            str(inputs["model"]),
            "--data",
            str(inputs["sft"]),
            "--batch-size",
            "8",
            "--max-length",
            "64",
            "--eval-fraction",
            "0",
        ]
    if stage == "rm":
        return [
            *common,
            "--model",
            str(inputs["model"]),
            "--data",
            str(inputs["preferences"]),
            "--batch-size",
            "8",
            "--max-length",
            "64",
            "--epochs",
            "1",
            "--eval-fraction",
            "0",
        ]
    return [
        *common,
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
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--max-new-tokens",
        "16",
        "--ppo-epochs",
        "1",
        "--num-minibatches",
        "2",
        "--port",
        "0",
        "--overwrite",
        "--save-every",
        "1000",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stages", nargs="+", choices=["ppo", "sft", "rm"], default=["ppo", "sft", "rm"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=["ppo", "sft", "rm", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rest)
        return 0

    from rlhf.core.modeling import parameter_count
    from rlhf.toy.processes import ServiceProcess

    key = "cuda_gb" if args.device.startswith("cuda") else "rss_gb"
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        inputs = make_inputs(root, args.layers, args.hidden, args.heads)
        from transformers import AutoConfig, AutoModelForCausalLM

        params = parameter_count(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(inputs["model"])))
        print(
            f"model: GPT-2, {args.layers} layers x {args.hidden}, {params / 1e6:.1f}M parameters; "
            f"device {args.device}; figure: {'max_memory_allocated' if key == 'cuda_gb' else 'peak RSS'}"
        )
        adapter_bytes, full_bytes = push_share(inputs["model"])
        print(
            f"weight push, float32: LoRA r8 {adapter_bytes / 2**20:.1f} MiB vs full {full_bytes / 2**20:.1f} MiB = "
            f"{adapter_bytes / full_bytes:.2%} (target <= {PUSH_SHARE_TARGET:.0%})"
        )
        baseline = run_worker("baseline", [])["rss_gb"] if key == "rss_gb" else 0.0
        if baseline:
            print(
                f"baseline: a process that imported torch, transformers, peft and grpc and ran nothing: "
                f"{baseline:.2f} GB (the second column subtracts it: what the stage itself added)"
            )
        targets = None
        if "ppo" in args.stages:
            targets = {}
            for name in ("policy", "reward", "reference"):
                proc = ServiceProcess(
                    ["serve", name, "--model", str(inputs["model"]), "--device", args.device],
                    name=name,
                    env={"OMP_NUM_THREADS": "1"},
                )
                targets[name] = stack.enter_context(proc).target
        for stage in args.stages:
            results[stage] = {}
            for mode in args.modes:
                out = root / "runs" / stage / mode.replace(" ", "_")
                figures = run_worker(stage, [*stage_args(stage, inputs, out, args.device, targets), *MODES[mode]])
                results[stage][mode] = figures
                figures["above_baseline_gb"] = figures[key] - baseline
                base = results[stage].get("fp32 full", figures)
                added = figures["above_baseline_gb"]
                step = ""
                if "step_rss_gb" in base and "step_rss_gb" in figures:
                    step = (
                        f" | the step alone {figures['step_rss_gb']:5.2f} GB "
                        f"{figures['step_rss_gb'] / base['step_rss_gb']:5.2f}x"
                    )
                print(
                    f"{stage:<4} {mode:<38} {figures[key]:7.2f} GB  {figures[key] / base[key]:5.2f}x of fp32 full  "
                    f"| above baseline {added:6.2f} GB {added / base['above_baseline_gb']:5.2f}x "
                    f"{added * 2**30 / params:6.1f} bytes/parameter{step}",
                    flush=True,
                )
    for stage, rows in results.items():
        for mode, target, strict in (
            ("LoRA r8 + bf16-true + checkpointing", LORA_SHARE_TARGET, False),
            ("bf16-mixed + checkpointing", BF16_TARGET, True),
        ):
            if {"fp32 full", mode} <= set(rows):
                for figure, label in (
                    (key, "process peak, loading included"),
                    ("above_baseline_gb", "above baseline"),
                    ("step_rss_gb", "the PPO step's own peak RSS"),
                ):
                    if figure not in rows[mode] or figure not in rows["fp32 full"]:
                        continue
                    share = rows[mode][figure] / rows["fp32 full"][figure]
                    met = share < target if strict else share <= target
                    print(
                        f"{stage}: {mode}, {label}: {share:.2f}x of fp32 full "
                        f"(target {'<' if strict else '<='} {target:.2f}): {'met' if met else 'missed'}"
                    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "parameters": params,
                    "device": args.device,
                    "baseline_gb": baseline,
                    "results": results,
                    "push_bytes": {"lora_r8": adapter_bytes, "full": full_bytes},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
