"""Training over several processes with torch.distributed: torchrun starts them, FSDP2 shards the models.

    torchrun --nproc-per-node 2 -m rlhf train ppo ...      # or: rlhf train ppo --nproc-per-node 2 ...
    world = init_world(config)          # one process group per run: gloo on CPU, NCCL on GPU
    model = shard(model)                # FSDP2 (fully_shard) per transformer block, then the whole model
    loss_sum = all_reduce_sum(loss_sum) # collectives are no-ops in a plain one-process run

A plain `rlhf train ...` (no torchrun) is world size 1 with no process group: nothing is sharded and
every collective here returns its input, so one code path serves both.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlhf.core.launch import launched_by_torchrun

log = logging.getLogger("rlhf.distributed")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: it serves the control API, logs, pushes weights and writes the run's single files."""
        return self.rank == 0


def world() -> World:
    """This process's place in the run (rank 0 of 1 without a process group)."""
    if not dist.is_available() or not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    """Rank 0 of torchrun's run (from its environment, so also before and after the process group), or a plain
    process: the one that prints a command's results."""
    return int(os.environ.get("RANK", "0")) == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_world(device: str = "auto", timeout_s: float = 600.0) -> World:
    """Join torchrun's process group (NCCL where this rank has a GPU, gloo otherwise); a no-op outside torchrun.
    `timeout_s` bounds how long a collective waits for a rank that stopped answering."""
    if not launched_by_torchrun() or is_distributed():
        return world()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    here = world()
    log.info(
        "joined the process group", extra={"rank": here.rank, "world_size": here.size, "backend": dist.get_backend()}
    )
    return here


def rank_device(device: str) -> str:
    """Under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if launched_by_torchrun() and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def close_world() -> None:
    if is_distributed():
        dist.destroy_process_group()


def block_classes(model: torch.nn.Module) -> set[str]:
    """The names of a transformers model's repeated blocks (GPT2Block, LlamaDecoderLayer, ...): the units FSDP2
    gathers one at a time. transformers lists them as `_no_split_modules` on every pretrained model class."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return names


def shard(model: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """FSDP2 over the whole world: each block's parameters split over the ranks and gathered for its forward and
    backward, then the rest (embeddings, head, LoRA wrappers) as the root. Identity without a process group.

    A model loaded on the CPU with a GPU `device` moves there block by block as it is sharded: no GPU ever holds
    more than its shards and one block whole, so a model larger than one GPU loads."""
    if not is_distributed():
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = device or next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = block_classes(model)
    for module in reversed(list(model.modules())):  # innermost first, should blocks nest
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter gathered whole, on every rank; a plain tensor as it is. A collective."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds of the tensors (its shards)."""
    return sum(local_tensor(t).numel() * t.element_size() for t in tensors)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of t (on NCCL it travels through this rank's GPU and comes back where it was)."""
    if is_distributed():
        moved = t.to(_collective_device(), copy=True)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(t.device)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over ranks of a CPU tensor."""
    if is_distributed():
        moved = t.to(_collective_device())
        dist.all_reduce(moved, op=dist.ReduceOp.MAX)
        return moved.to(t.device)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any: ranks must agree on every branch that runs a collective."""
    return bool(all_reduce_max(torch.tensor([float(flag)])).item())


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's obj, in rank order (pickled; for small things such as a rollout's records)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank src's obj on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_rows(n: int, size: int | None = None, rank: int | None = None) -> slice:
    """This rank's contiguous share of n rows (the first n % size ranks get one more)."""
    here = world()
    size, rank = size or here.size, here.rank if rank is None else rank
    start = rank * (n // size) + min(rank, n % size)
    return slice(start, start + n // size + (1 if rank < n % size else 0))


def batch_share(n: int) -> tuple[slice, float]:
    """This rank's rows of a global batch of n, and the weight of its loss term: 1.0; or, for a rank the split
    leaves without rows (n < world size), row 0 at weight 0.0, since under FSDP every rank must run each forward
    and backward (their collectives wait for all)."""
    rows = shard_rows(n)
    return (rows, 1.0) if rows.stop > rows.start else (slice(0, 1), 0.0)


def reshard(model: torch.nn.Module) -> None:
    """Every FSDP2 unit of the model back to its shards. After a forward with no backward the root's parameters
    stay gathered (FSDP2 expects the backward next): an in-place edit of those copies would be lost."""
    if not is_distributed():
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@torch.no_grad()
def add_to_parameter(param: torch.Tensor, delta: torch.Tensor) -> None:
    """param += delta, for a whole-parameter delta that every rank holds alike: on a sharded (DTensor) parameter
    each rank adds the part of its shard. Call it with the model resharded (`reshard`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        delta = distribute_tensor(delta.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    param.add_(delta)
