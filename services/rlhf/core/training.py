"""What every training stage shares to fit larger models: precision, gradient checkpointing and LoRA.

    @dataclass
    class SFTConfig(TrainingOptions): ...          # --precision, --gradient-checkpointing, --lora-*
    model = prepare_model(model, config, "causal-lm", device)
    optimizer = make_optimizer(trainable_parameters(model), config, lr=...)
    with autocast(config, device):
        loss = ...

`--precision` takes Lightning's names:
- `fp32`: everything in float32 (the default);
- `bf16-mixed`: float32 weights and optimizer states, the forward and backward under bfloat16 autocast;
- `bf16-true`: bfloat16 weights; the optimizer keeps its states (and does its arithmetic) in float32.

LoRA comes from peft. By default it adapts every linear projection of the attention and MLP blocks, found
by module type (peft's "all-linear", which leaves out the output head), so GPT-2's Conv1D, Llama's,
Qwen's and Mistral's q/k/v/o and gate/up/down projections are all found without their names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from rlhf.core.errors import UserError
from rlhf.core.modeling import CONFIG_OVERRIDES
from rlhf.core.training_options import Precision, TrainingOptions  # noqa: F401 - re-exported

log = logging.getLogger("rlhf.training")

Task = Literal["causal-lm", "score"]


def check_precision(options: TrainingOptions, device: torch.device) -> None:
    """A bfloat16 precision on a GPU that has none is refused in one line (CPUs emulate it, slowly)."""
    if options.precision != "fp32" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"--precision {options.precision}: this GPU ({torch.cuda.get_device_name(device)}) has no "
            "bfloat16 support; use --precision fp32"
        )


def weights_dtype(options: TrainingOptions) -> torch.dtype:
    return torch.bfloat16 if options.precision == "bf16-true" else torch.float32


def autocast(options: TrainingOptions, device: torch.device):
    """bfloat16 autocast for bf16-mixed; nothing otherwise (bf16-true weights are bfloat16 already)."""
    if options.precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lora_config(options: TrainingOptions, task: Task, extra_trained: tuple[str, ...] = (), conv1d: bool = False):
    from peft import LoraConfig, TaskType

    targets = (
        [m.strip() for m in options.lora_target_modules.split(",") if m.strip()]
        if options.lora_target_modules
        else "all-linear"
    )
    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=targets,
        task_type=TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS,
        modules_to_save=list(extra_trained) or None,  # with SEQ_CLS, peft trains and saves the score head too
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
    )


def prepare_model(
    model: torch.nn.Module,
    options: TrainingOptions,
    task: Task,
    extra_trained: tuple[str, ...] = (),
    adapter: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """The model as the options train it: cast for bf16-true, gradient checkpointing on, LoRA around it (a
    fresh adapter, or with `adapter` a saved one that goes on training: resume)."""
    if options.precision == "bf16-true":
        model = model.to(torch.bfloat16)
    if options.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise UserError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if options.uses_lora:
        from peft import get_peft_model
        from transformers.pytorch_utils import Conv1D

        conv1d = any(isinstance(m, Conv1D) for m in model.modules())
        try:
            with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours to answer
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing")
                if adapter is not None:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
                else:
                    model = get_peft_model(model, lora_config(options, task, extra_trained, conv1d))
        except ValueError as err:  # e.g. a --lora-target-modules name the model does not have
            raise UserError(f"--lora-target-modules: {str(err).splitlines()[0]}") from None
        trained, total = (
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()),
        )
        log.info(
            "LoRA",
            extra={
                "r": options.lora_r,
                "alpha": options.lora_alpha,
                "trainable": trained,
                "total": total,
                "trainable_share": round(trained / total, 5),
            },
        )
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout off, so that train mode (which gradient checkpointing needs) computes what eval mode does."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def is_peft(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PeftModel (with its adapter layers in place), or the model itself."""
    return model.get_base_model() if is_peft(model) else model


def stochastic_round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 -> bfloat16, rounding up or down at random in proportion to the distance (unbiased): an update
    far below a weight's bf16 resolution (lr 1e-5 on a weight of 1) still moves it on average, where
    round-to-nearest would drop it every time. Random bits are added below bf16's 16 kept bits, then cut."""
    if dtype != torch.bfloat16 or x.dtype != torch.float32:
        return x.to(dtype)
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


class Float32StateAdamW(torch.optim.AdamW):
    """AdamW whose states and arithmetic stay in float32 for parameters of a lower precision (bf16-true).

    Each step runs torch's own AdamW on a float32 copy of one parameter at a time, then rounds the result
    into the parameter stochastically (no float32 master copy is kept): bfloat16 weights and gradients,
    float32 moments, one parameter's float32 copy as the only transient memory."""

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)  # torch casts the moments to each parameter's dtype: undo that
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].float()

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim.adam import adam

        from rlhf.core.distributed import local_tensor

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                # Elementwise math: under FSDP2 each rank updates its own shards (a DTensor's local tensor is a
                # view of it), and the moments stay DTensors, sharded like their parameters, for DCP.
                weights, moments = local_tensor(p), (local_tensor(state["exp_avg"]), local_tensor(state["exp_avg_sq"]))
                master = weights.float()
                adam(
                    [master],
                    [local_tensor(p.grad).float()],
                    [moments[0]],
                    [moments[1]],
                    [],
                    [state["step"]],
                    foreach=False,
                    decoupled_weight_decay=True,
                    amsgrad=False,
                    beta1=group["betas"][0],
                    beta2=group["betas"][1],
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                )
                weights.copy_(stochastic_round(master, p.dtype))
        return loss


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, model: torch.nn.Module, max_grad_norm: float
) -> None:
    """One update of the trained parameters: backward, clip the gradient's norm, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable_parameters(model), max_grad_norm)
    optimizer.step()


def make_optimizer(parameters, options: TrainingOptions, **adamw) -> torch.optim.Optimizer:
    """AdamW; for bf16-true, the float32-state variant."""
    parameters = list(parameters)
    if options.precision == "bf16-true" and any(p.dtype != torch.float32 for p in parameters):
        return Float32StateAdamW(parameters, **adamw)
    return torch.optim.AdamW(parameters, **adamw)


def lora_factors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA learner pushes (rlhf.v1.WeightsKind LORA): per adapted module M, under the base model's
    names, "M.lora_A" (r x in) and "M.lora_B" (out x r) times alpha / r, so that W = W_base + B @ A."""
    from peft.tuners.lora import LoraLayer

    factors = {}
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            (adapter,) = module.active_adapters
            factors[f"{name}.lora_A"] = module.lora_A[adapter].weight.detach()
            factors[f"{name}.lora_B"] = module.lora_B[adapter].weight.detach() * module.scaling[adapter]
    return factors


def name_base(model: torch.nn.Module, base: str) -> None:
    """Record `base` (absolute, when it is a local dir) as the base a PeftModel's saved adapter names."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = str(Path(base).resolve()) if Path(base).exists() else base


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The FSDP2-sharded model's whole weights, on the CPU, on rank 0 (None on the others). Every rank must call
    it: the shards are gathered one parameter at a time, so no rank holds a second copy on its device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from rlhf.core.distributed import reshard, world

    reshard(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if world().is_main else None


def unsharded(model: torch.nn.Module, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """The trained model whole, for save_trained: the model itself in one process. Under FSDP every rank takes
    part in gathering the weights and rank 0 loads them into `rebuild()`, a fresh copy of the model as the stage
    built it (on the CPU: beside the shards on the device); the other ranks get None."""
    from rlhf.core.distributed import is_distributed

    if not is_distributed():
        return model
    state = gather_full_state(model)
    if state is None:
        return None
    whole = rebuild()
    whole.load_state_dict(state)
    return whole


def save_trained(
    model: torch.nn.Module,
    tokenizer,
    out: str | os.PathLike,
    options: TrainingOptions,
    base: str,
    config_overrides: dict | None = None,
) -> Path:
    """Write what a stage trained, atomically (to OUT.tmp, then swapped in).

    Full fine-tuning: a standard model dir. LoRA: the PEFT adapter in OUT (its adapter_config.json names
    `base`, so `from_pretrained` of a PeftModel, and every `rlhf` command, find the base), with the
    tokenizer; and, unless --no-merge, the merged standard model dir in OUT/merged. The merge happens in
    place, after the adapter is written: the model is a plain one afterwards. `config_overrides` are model-config
    fields an adapter dir cannot hold in a config.json of its own (a reward model's `reward_offset`): written to
    its CONFIG_OVERRIDES file, and set on the model config whenever the adapter is loaded."""
    from rlhf.core.files import replace_dir

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_peft(model):
        name_base(model, base)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if config_overrides:
            (tmp / CONFIG_OVERRIDES).write_text(json.dumps(config_overrides, indent=2) + "\n")
        if options.merge:
            plain = model.merge_and_unload()
            plain.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
    else:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return replace_dir(tmp, out)
