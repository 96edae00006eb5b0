"""The demo pipeline: tiny model + data, SFT, reward model, services, PPO, evaluation, report.

Each stage records itself in WORKDIR/stages/<name>.json when it finishes; a rerun reuses finished
stages (PPO resumes from its last checkpoint) and --fresh starts over. Services run as separate
local processes on free loopback ports and are always stopped, on success, failure or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rlhf.core.errors import UserError
from rlhf.core.flags import setting
from rlhf.core.resources import die_with_parent
from rlhf.toy.processes import RLHF_COMMAND, ServiceProcess

# The demo's recipe, chosen with benchmarks/seed_sweep.py (docs/benchmarks.md#seed-sweep), learns on every seed and CPU:
# - the reward model trains on 3x the preferences at lr 1e-3 with AdamW beta2 0.95 (on 1x, or at lr 2e-3,
#   some seeds collapse to near-constant scores, others never learn the topic relation);
# - PPO at lr 3e-4 stops a step's epochs once the policy has moved approx KL 0.05 from the rollout's, so no
#   single update blows KL up; beta = 0.3 holds the KL per response under 5 nats;
# - responses have at least 4 tokens (the shortest real answer, " cats are kind."): the reward model never saw
#   an empty response and scores it high, and at beta 0.1-0.3 PPO found that on one seed in five.
PREFERENCE_SCALE = 3
MODEL_SIZES = {  # name: (layers, hidden, heads)
    "tiny": (2, 128, 4),
    "small": (4, 256, 8),
}


@dataclass
class DemoConfig:
    """`rlhf demo`; its flags and --help are generated from the field docstrings (rlhf.core.flags)."""

    workdir: Path | str = "demo-run"
    """keeps every artifact; a rerun reuses finished stages"""
    steps: int = 60
    """PPO steps"""
    fresh: bool = False
    """redo every stage"""
    device: str = "cpu"
    """cpu, cuda or auto"""
    model_size: Literal["tiny", "small"] = "tiny"
    """size of the bundled model"""
    data_scale: float = 1.0
    """shrink or grow the synthetic data"""
    seed: int = 0
    """seed of the model, data and every training stage"""
    ppo_batch_size: int = 32
    """prompts per PPO step"""
    rm_epochs: int = setting(1, cli=False)  # the recipe's (see above), not a knob
    kl_coef: float = 0.3
    """beta: PPO's per-token KL penalty weight"""
    min_new_tokens: int = 4
    """PPO samples: no EOS before this many tokens"""
    eval_prompts: int = 64
    """held-out prompts for the final comparison"""
    chat: bool = False
    """run on the synthetic task written as conversations, rendered with the tiny model's chat template"""
    timings: dict[str, float] = setting(factory=dict, cli=False)  # filled in as the stages run

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    @property
    def paths(self) -> dict[str, Path]:
        w = self.workdir
        return {
            "base": w / "models" / "base",
            "sft": w / "models" / "sft",
            "rm": w / "models" / "rm",
            "data": w / "data",
            "ppo": w / "ppo",
            "logs": w / "logs",
            "stages": w / "stages",
        }


def banner(text: str) -> None:
    print(f"\n\033[1m=== {text} ===\033[0m", flush=True)


def run_cli(args: list[str]) -> None:
    """Run `rlhf <args>` in a child process, its progress bars on our terminal."""
    result = subprocess.run([*RLHF_COMMAND, "--log-level", "WARNING", *args])
    if result.returncode != 0:
        raise UserError(f"`rlhf {' '.join(args[:2])}` failed with exit code {result.returncode}")


class Stages:
    """Runs each stage once; remembers finished stages and their wall time in WORKDIR/stages/."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self.dir = config.paths["stages"]
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, title: str, fn: Callable[[], None]) -> None:
        marker = self.dir / f"{name}.json"
        if marker.exists():
            self.config.timings[name] = json.loads(marker.read_text())["seconds"]
            banner(f"{title} (done earlier: reusing; --fresh redoes it)")
            return
        banner(title)
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        self.config.timings[name] = seconds
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": seconds, "finished": time.time()}))
        tmp.replace(marker)


def run_demo(config: DemoConfig) -> dict:
    if config.model_size not in MODEL_SIZES:
        raise UserError(f"unknown --model-size {config.model_size!r}; choose from {', '.join(MODEL_SIZES)}")
    if config.fresh and config.workdir.exists():
        shutil.rmtree(config.workdir)
    p = config.paths
    for key in ("data", "logs"):
        p[key].mkdir(parents=True, exist_ok=True)
    stages = Stages(config)
    layers, hidden, heads = MODEL_SIZES[config.model_size]
    seed = str(config.seed)

    stages.run(
        "prepare",
        "1/6 tiny model and synthetic task",
        lambda: (
            run_cli(
                [
                    "tiny-model",
                    "--out",
                    str(p["base"]),
                    "--layers",
                    str(layers),
                    "--hidden",
                    str(hidden),
                    "--heads",
                    str(heads),
                    "--seed",
                    seed,
                ]
            ),
            run_cli(
                [
                    "data",
                    "synth",
                    "--out",
                    str(p["data"]),
                    "--seed",
                    seed,
                    "--scale",
                    str(config.data_scale),
                    "--preference-scale",
                    str(PREFERENCE_SCALE),
                    *(["--chat"] if config.chat else []),
                ]
            ),
        ),
    )
    stages.run(
        "sft",
        "2/6 supervised fine-tuning",
        lambda: run_cli(
            [
                "train",
                "sft",
                "--model",
                str(p["base"]),
                "--data",
                str(p["data"] / "sft.jsonl"),
                "--out",
                str(p["sft"]),
                "--seed",
                seed,
                "--device",
                config.device,
                "--lr",
                "3e-3",
                "--batch-size",
                "32",
            ]
        ),
    )
    stages.run(
        "rm",
        "3/6 reward model from preference rankings",
        lambda: run_cli(
            [
                "train",
                "rm",
                "--model",
                str(p["sft"]),
                "--data",
                str(p["data"] / "preferences.jsonl"),
                "--out",
                str(p["rm"]),
                "--epochs",
                str(config.rm_epochs),
                "--seed",
                seed,
                "--device",
                config.device,
                "--lr",
                "1e-3",
                "--adam-beta2",
                "0.95",
                "--batch-size",
                "16",
                "--max-length",
                "64",
            ]
        ),
    )
    stages.run("ppo", "4/6 PPO through the policy, reward and reference services", lambda: run_ppo(config))
    from rlhf.demo.report import evaluate, write_report

    results: dict = {}
    stages.run(
        "evaluate",
        "5/6 evaluate the SFT and PPO policies on held-out prompts",
        lambda: results.update(evaluate(config)),
    )
    banner("6/6 report")
    return write_report(config, results or None)


def run_ppo(config: DemoConfig) -> None:
    """Start the three services as processes, run the learner against them, and stop them all."""
    from rlhf.demo.live import follow_training

    p = config.paths
    logs = p["logs"]
    with ExitStack() as stack:
        services = {}
        for name, model in (("policy", p["sft"]), ("reference", p["sft"]), ("reward", p["rm"])):
            # One torch thread per service: on a small machine the processes otherwise spin against each other.
            proc = ServiceProcess(
                ["serve", name, "--model", str(model), "--device", config.device],
                log_path=logs / f"{name}.log",
                name=name,
                env={"RLHF_LOG_FORMAT": "text", "OMP_NUM_THREADS": "1"},
            )
            stack.enter_context(proc)
            print(f"  {name:<9} serving on {proc.target}  (log: {proc.log_path})", flush=True)
            services[name] = proc
        learner = ServiceProcess([], name="learner")  # for a free port only
        from rlhf.learner.state import latest_checkpoint

        # A rerun continues from the last checkpoint; an earlier attempt cut short before any is redone.
        resume = ["--resume"] if latest_checkpoint(p["ppo"]) else ["--overwrite"]
        command = [
            *RLHF_COMMAND,
            "train",
            "ppo",
            "--model",
            str(p["sft"]),
            "--value-model",
            str(p["rm"]),
            "--policy",
            services["policy"].target,
            "--reward",
            services["reward"].target,
            "--reference",
            services["reference"].target,
            "--prompts",
            str(p["data"] / "prompts.jsonl"),
            "--ptx-data",
            str(p["data"] / "pretrain.jsonl"),
            "--out",
            str(p["ppo"]),
            "--steps",
            str(config.steps),
            "--batch-size",
            str(config.ppo_batch_size),
            "--seed",
            str(config.seed),
            "--device",
            config.device,
            "--port",
            str(learner.port),
            "--log-rollouts",
            "--lr",
            "3e-4",
            "--early-stop-kl",
            "0.05",
            "--kl-coef",
            str(config.kl_coef),
            "--min-new-tokens",
            str(config.min_new_tokens),
            "--max-new-tokens",
            "12",
            "--ptx-coef",
            "0.05",
            "--ptx-batch-size",
            "4",
            "--save-every",
            "20",
            *resume,
        ]
        print(f"  learner   control API on 127.0.0.1:{learner.port}  (log: {logs / 'learner.log'})", flush=True)
        with open(logs / "learner.log", "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
            )
        stack.callback(_stop_child, proc)
        code = follow_training(proc, p["ppo"], config.steps, services)
        if code != 0:
            tail = (logs / "learner.log").read_text(errors="replace")[-3000:]
            raise UserError(f"the learner failed with exit code {code}; last lines of its log:\n{tail}")


def _stop_child(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def config_summary(config: DemoConfig) -> dict:
    summary = asdict(config)
    summary["workdir"] = str(config.workdir)
    return summary
