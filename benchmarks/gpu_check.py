"""The GPU check: one script, at most about 8 minutes on one H100/H200, no download.

    .venv/bin/python benchmarks/gpu_check.py                    # ~0.9B-parameter Llama-style model, cuda
    .venv/bin/python benchmarks/gpu_check.py --small --device cpu   # a smoke run of the script itself

On a random-init model made from a config (Llama layout, the tiny tokenizer), with the three services as
`rlhf serve` processes on the same GPU, it prints:
1. bf16 generation tokens/s through `rlhf serve policy`, at 1 and at 32 concurrent clients, on the hf engine
   and, where vLLM is importable (here, or in $RLHF_VLLM_PYTHON / .venv-vllm), on the vllm engine, with the
   time of a full weight push into it; where it is not, the script says so;
2. a learner PPO step (`rlhf train ppo --steps 2`) in full bf16-mixed and in LoRA r 16 + bf16-true, with
   each one's step time, weight-push time and GB/s (full weights, or the adapter only), and peak GPU memory
   (`memory/cuda_max_allocated_gb`, the learner's own metric); then both again as the distributed learner
   under torchrun at world size 1 (NCCL process group, FSDP2-wrapped models, DCP checkpoints);
3. the reward benchmark (`bench_reward.py --device cuda`): 64 clients against in-process batched, and
   against batching off.
Each part runs on its own and reports its own failure, so one broken part does not hide the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent

# ~0.9B parameters: 16 layers x 2048, MLP 5632, grouped-query attention (16 heads, 8 key/value heads)
LARGE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    max_position_embeddings=1024,
)
SMALL = dict(
    hidden_size=128,  # head dim 32: vLLM's CPU attention has no kernel for 16
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def make_model(out: Path, shape: dict) -> int:
    """A random-init Llama-style causal LM with the tiny tokenizer, saved in bfloat16; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.toy.tiny import train_tokenizer

    tokenizer = train_tokenizer(1024, n_positions=shape["max_position_embeddings"])
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id or eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id or eos,
        **shape,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def generation_throughput(target: str, clients: int, seconds: float, new_tokens: int) -> float:
    """Response tokens per second from `clients` threads generating back to back for `seconds`."""
    from rlhf.core.types import GenerationParams
    from rlhf.policy.client import PolicyClient

    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0)
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        with PolicyClient(target, timeout=300) as policy:
            while time.monotonic() < deadline:
                samples = policy.generate(["Human: Describe cats.\nAssistant:"], params)
                counts[i] += sum(len(s.response_token_ids) for s in samples)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


TORCHRUN_1 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]


def learner_step(paths: dict, targets: dict, out: Path, device: str, flags: list[str], torchrun: bool = False) -> dict:
    """Two PPO steps through the services; the second step's figures from the learner's metrics. With torchrun:
    the distributed learner at world size 1 (NCCL on a GPU: the process group, FSDP2, DCP checkpoints)."""
    launcher = [*TORCHRUN_1, "-m", "rlhf"] if torchrun else [sys.executable, "-m", "rlhf"]
    command = [
        *launcher,
        "--log-level",
        "WARNING",
        "train",
        "ppo",
        "--model",
        str(paths["model"]),
        "--value-model",
        str(paths["model"]),
        "--policy",
        targets["policy"],
        "--reward",
        targets["reward"],
        "--reference",
        targets["reference"],
        "--prompts",
        str(paths["prompts"]),
        "--out",
        str(out),
        "--overwrite",
        "--steps",
        "2",
        "--batch-size",
        "32",
        "--max-new-tokens",
        "64",
        "--device",
        device,
        "--port",
        "0",
        "--save-every",
        "1000",
        *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return last


def push_bytes(model_dir: Path, lora_r: int | None, replica_dtype_bytes: int = 2) -> int:
    """Bytes one push sends to a bfloat16 replica: every weight, or the LoRA factors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.core.training import TrainingOptions, lora_factors, prepare_model

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    if lora_r is None:
        return sum(p.numel() for p in model.state_dict().values()) * replica_dtype_bytes
    factors = lora_factors(prepare_model(model, TrainingOptions(lora_r=lora_r, lora_alpha=2 * lora_r), "causal-lm"))
    return sum(t.numel() for t in factors.values()) * replica_dtype_bytes


def vllm_command() -> tuple[list[str] | None, str]:
    """(`python -m rlhf.cli` of an environment where vLLM imports, or None; where it was looked for)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", "rlhf.cli"], "this environment"
    other = Path(os.environ.get("RLHF_VLLM_PYTHON") or HERE.parent / ".venv-vllm" / "bin" / "python")
    if other.exists() and subprocess.run([str(other), "-c", "import vllm"], capture_output=True).returncode == 0:
        return [str(other), "-m", "rlhf.cli"], str(other)
    return None, f"this environment nor {other}"


def part(name: str, fn) -> None:
    start = time.monotonic()
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - report and go on with the next part
        print(f"[{name}] FAILED after {time.monotonic() - start:.0f} s: {type(err).__name__}: {str(err)[-1500:]}")
    else:
        print(f"[{name}] done in {time.monotonic() - start:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model: check the script, not the GPU")
    parser.add_argument("--seconds", type=float, default=20.0, help="each generation measurement")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device: nothing to check (use --device cpu --small for a smoke run)")
            return 1
        print(
            f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"bf16 {torch.cuda.is_bf16_supported()}"
        )
    from rlhf.toy.processes import ServiceProcess
    from rlhf.toy.synthetic import write_task

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        params = make_model(root / "model", SMALL if args.small else LARGE)
        paths = {"model": root / "model", "prompts": write_task(root / "data", scale=0.2)["prompts"]}
        print(f"model: Llama layout, {params / 1e9:.2f}B parameters, random init, bfloat16", flush=True)
        dtype = ["--dtype", "bfloat16"] if args.device.startswith("cuda") else []
        targets = {}
        for name in ("policy", "reference", "reward"):
            proc = ServiceProcess(
                ["serve", name, "--model", str(paths["model"]), "--device", args.device, *dtype],
                name=name,
                log_path=root / f"{name}.log",
            )
            proc.start(timeout=600)  # a large model may take a while to load
            stack.callback(proc.terminate)
            targets[name] = proc.target

        def generation() -> None:
            for clients in (1, 32):
                rate = generation_throughput(targets["policy"], clients, args.seconds, 64)
                print(
                    f"generation, bf16, 64 new tokens per sample: {clients:>2} client(s) {rate:9.0f} tokens/s",
                    flush=True,
                )

        def learner() -> None:
            lora = ["--precision", "bf16-true", "--lora-r", "16", "--lora-alpha", "32", "--gradient-checkpointing"]
            for label, flags, lora_r, torchrun in (
                ("full, bf16-mixed", ["--precision", "bf16-mixed"], None, False),
                ("LoRA r16, bf16-true", lora, 16, False),
                (
                    "full, bf16-mixed, torchrun world size 1 (FSDP2; NCCL on a GPU)",
                    ["--precision", "bf16-mixed"],
                    None,
                    True,
                ),
                ("LoRA r16, bf16-true, torchrun world size 1 (FSDP2; NCCL on a GPU)", lora, 16, True),
            ):
                out = root / "runs" / label.replace(" ", "_").replace(",", "")
                m = learner_step(paths, targets, out, args.device, flags, torchrun)
                sent = push_bytes(paths["model"], lora_r)
                sync = m.get("time/weight_sync", float("nan"))
                print(
                    f"learner PPO step, {label}: step {m['time/step']:.1f} s, "
                    f"update {m.get('time/update', 0):.1f} s; "
                    f"weight push {sent / 1e9:.3f} GB in {sync:.2f} s = {sent / 1e9 / sync:.2f} GB/s; "
                    f"peak GPU memory {m.get('memory/cuda_max_allocated_gb', float('nan')):.1f} GB "
                    f"(peak RSS {m.get('memory/peak_rss_gb', float('nan')):.1f} GB)",
                    flush=True,
                )

        def reward() -> None:
            size = (
                ["--layers", "2", "--hidden", "128", "--heads", "4"]
                if args.small
                else ["--layers", "12", "--hidden", "768", "--heads", "12"]
            )
            done = subprocess.run(
                [sys.executable, str(HERE / "bench_reward.py"), "--device", args.device, *size, "--seconds", "5"],
                capture_output=True,
                text=True,
                timeout=420,
            )
            print(done.stdout[-3000:] if done.returncode == 0 else f"bench_reward failed:\n{done.stderr[-2000:]}")

        def vllm_generation() -> None:
            from rlhf.policy.client import PolicyClient

            command, where = vllm_command()
            if command is None:
                print(f"vllm engine: SKIPPED, vLLM is not importable in {where} (pip install 'rlhf[vllm]')")
                return
            kv_gb = "0.25" if args.small else "8"
            proc = ServiceProcess(
                ["serve", "policy", "--model", str(paths["model"]), "--device", args.device, *dtype]
                + ["--engine", "vllm", "--vllm-kv-cache-gb", kv_gb],
                name="policy-vllm",
                log_path=root / "policy-vllm.log",
                command=command,
            )
            proc.start(timeout=900)  # vLLM's import, compilation and CUDA graphs
            try:
                for clients in (1, 32):
                    rate = generation_throughput(proc.target, clients, args.seconds, 64)
                    print(f"generation, vllm engine ({where}): {clients:>2} client(s) {rate:9.0f} tokens/s", flush=True)
                import torch
                from transformers import AutoModelForCausalLM

                served = torch.bfloat16 if dtype else torch.float32  # what the replica serves, and takes
                state = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=served).state_dict()
                with PolicyClient(proc.target, timeout=600) as policy:
                    start = time.perf_counter()
                    policy.update_weights(state, 1)
                    print(f"vllm engine: full weight push {time.perf_counter() - start:.2f} s", flush=True)
            finally:
                proc.terminate()

        part("generation", generation)
        part("vllm generation", vllm_generation)
        part("learner", learner)
    part("reward benchmark", reward)  # after the services are gone: the GPU is its own
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
