"""LoRA adapters on a serving replica: the factors a LoRA learner pushes, merged into the base weights.

A LoRA stream (rlhf.v1.WeightsKind LORA) carries, per adapted module M, "M.lora_A" (r x in) and "M.lora_B"
(out x r, already scaled by alpha / r). The replica keeps a copy of each adapted module's base weight and
serves W = W_base + B @ A (transposed for GPT-2's Conv1D, which stores its weight as in x out); the base copies
live in host memory, not on the GPU. The first
push fixes the adapter's layout (its modules and ranks); a later push with another layout is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from rlhf.core.checks import InvalidRequest
from rlhf.core.weights import TensorSpec


def _linear(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, bool] | None:
    """The module `name` if it is a linear layer (nn.Linear, or Conv1D: then True), else None."""
    from transformers.pytorch_utils import Conv1D

    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(module, Conv1D):
        return module, True
    return (module, False) if isinstance(module, torch.nn.Linear) else None


def _in_out(module: torch.nn.Module, conv1d: bool) -> tuple[int, int]:
    rows, cols = module.weight.shape
    return (rows, cols) if conv1d else (cols, rows)


class ServedAdapter:
    """The adapter state of one replica's model: layout, and the base weights of the adapted modules."""

    def __init__(self, model: torch.nn.Module, model_dir: str | os.PathLike, dtype: torch.dtype):
        self.model, self.model_dir, self.dtype = model, model_dir, dtype
        self.layout: dict[str, int] | None = None  # module -> rank, fixed by the first push
        self.base: dict[str, torch.Tensor] = {}
        self.pristine = True  # the model still holds its model dir's weights (no full push since load)

    def spec_error(self, name: str, spec: TensorSpec) -> str | None:
        """Why one tensor of a LoRA stream does not fit this model (None if it does); checked per chunk,
        before any memory is allocated for it."""
        dtype, shape = spec
        module_name, _, factor = name.rpartition(".")
        if factor not in ("lora_A", "lora_B"):
            return "not a LoRA factor (MODULE.lora_A or MODULE.lora_B)"
        found = _linear(self.model, module_name)
        if found is None:
            return f"the model has no linear module {module_name!r}"
        if not dtype.is_floating_point or len(shape) != 2:
            return f"expected a floating-point matrix, got {dtype} {list(shape)}"
        fan_in, fan_out = _in_out(*found)
        rank = shape[0] if factor == "lora_A" else shape[1]
        expected = (rank, fan_in) if factor == "lora_A" else (fan_out, rank)
        if shape != expected or not 1 <= rank <= min(fan_in, fan_out):
            return f"shape {list(shape)} does not fit a rank-r factor of a {fan_in} -> {fan_out} module"
        if self.layout is not None and self.layout.get(module_name) != rank:
            return (
                f"does not match the replica's adapter layout "
                f"(module {module_name!r}: rank {self.layout.get(module_name)})"
            )
        return None

    def check(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """The whole stream: every tensor fits, each module has both factors of one rank, and the modules are
        the adapter's (once it has a layout)."""
        layout: dict[str, int] = {}
        for name, tensor in tensors.items():
            if why := self.spec_error(name, (tensor.dtype, tuple(tensor.shape))):
                raise InvalidRequest(f"{name}: {why}")
            module, _, factor = name.rpartition(".")
            rank = tensor.shape[0] if factor == "lora_A" else tensor.shape[1]
            if layout.setdefault(module, rank) != rank:
                raise InvalidRequest(f"{module}: lora_A and lora_B have different ranks")
        unpaired = [m for m in layout if f"{m}.lora_A" not in tensors or f"{m}.lora_B" not in tensors]
        if unpaired:
            raise InvalidRequest(f"{unpaired[0]}: lora_A and lora_B come together")
        if self.layout is not None and layout != self.layout:
            missing = sorted(set(self.layout) - set(layout))
            raise InvalidRequest(
                f"the adapter's modules do not match the replica's adapter layout "
                f"({len(layout)} modules, expected {len(self.layout)}; missing e.g. {missing[:2]})"
            )

    def apply(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """W = W_base + B @ A in every adapted module. Runs on the model thread, between batches, after check."""
        modules = sorted({name.rpartition(".")[0] for name in tensors})
        if self.layout is None:
            self._keep_base(modules)
            self.layout = {m: tensors[f"{m}.lora_A"].shape[0] for m in modules}
        with torch.no_grad():
            for name in modules:
                module, conv1d = _linear(self.model, name)
                a, b = (tensors[f"{name}.{f}"].to(module.weight.device, torch.float32) for f in ("lora_A", "lora_B"))
                delta = b @ a  # (out, in)
                base = self.base[name].to(module.weight.device, non_blocking=True)
                module.weight.copy_((base.float() + (delta.T if conv1d else delta)).to(module.weight.dtype))

    def _keep_base(self, modules: list[str]) -> None:
        """Copies of the adapted modules' base weights. An adapter is relative to the model dir: after a full
        push since load (another run's weights), every weight is first read from the model dir again."""
        if not self.pristine:
            from rlhf.core.modeling import load_causal_lm

            fresh = load_causal_lm(self.model_dir, torch.device("cpu"), self.dtype).state_dict()
            with torch.no_grad():
                for name, tensor in self.model.state_dict().items():  # shares storage with the model
                    tensor.copy_(fresh[name])
            self.pristine = True
        # In host memory: a copy of every adapted weight on the GPU would double the replica's weight memory.
        pin = torch.cuda.is_available() and next(self.model.parameters()).is_cuda
        self.base = {m: _linear(self.model, m)[0].weight.detach().to("cpu", copy=True) for m in modules}
        if pin:
            self.base = {m: w.pin_memory() for m, w in self.base.items()}

    def full_weights_applied(self) -> None:
        """After a full push the served weights are the learner's, no longer base plus adapter."""
        self.layout, self.base, self.pristine = None, {}, False
