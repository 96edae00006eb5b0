"""Checkpoints of a run, sharded with torch.distributed.checkpoint (DCP): atomic, and resumable at any world size.

    OUT/checkpoints/step-000050/weights/           DCP: the trained tensors of pi_RL and the critic (with LoRA: the
                                                   adapters and heads) and the optimizer's state, a file per rank
    OUT/checkpoints/step-000050/rng/rank-00000.pt  each rank's random state
    OUT/checkpoints/step-000050/trainer_state.pt   step, scheduler, beta, cursors, what was trained: written last
    OUT/checkpoints/latest                         name of the newest complete checkpoint

Every rank writes its shards under .tmp-step-N; then rank 0 writes trainer_state.pt (the complete marker), renames
the dir into place and replaces `latest`, so a SIGKILL of any rank at any moment leaves the previous checkpoint
intact. DCP reshards on load: a checkpoint written by 2 ranks resumes on 1, and one of 1 on 2. A one-process run
writes the same layout (DCP without a process group).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import warnings
from pathlib import Path

import torch

from rlhf.core import distributed
from rlhf.core.errors import UserError
from rlhf.core.files import write_text_atomic

log = logging.getLogger("rlhf.learner")

COMPLETE = "trainer_state.pt"  # written last: a checkpoint dir without it is not one


@contextlib.contextmanager
def quiet_without_process_group():
    """DCP warns that it saves in one process when there is no process group: that is what a plain run means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def checkpoint_root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest step-N dir."""
    root = checkpoint_root(out)
    pointer = root / "latest"
    if pointer.exists() and (root / pointer.read_text().strip() / COMPLETE).exists():
        return root / pointer.read_text().strip()
    complete = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists())
    return complete[-1] if complete else None


def trained_modules(state) -> torch.nn.ModuleDict:
    """pi_RL and the critic under one root, so that their tensors and the optimizer's are named policy.* and
    value.* in the checkpoint."""
    return torch.nn.ModuleDict({"policy": state.policy} | ({"value": state.value} if state.value is not None else {}))


def trained_tensors(state) -> tuple[torch.nn.ModuleDict, dict, dict]:
    """(modules, model tensors, optimizer state) as DCP saves and loads them; only what trains (LoRA: the
    adapters and heads, not the frozen base, which --model gives again)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    modules = trained_modules(state)
    with quiet_without_process_group():
        model_state, optimizer_state = get_state_dict(modules, state.optimizer)
    trained = {name for name, p in modules.named_parameters() if p.requires_grad}
    return modules, {name: t for name, t in model_state.items() if name in trained}, optimizer_state


def rng_state(state) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save_checkpoint(state, out: str | Path, keep: int = 2) -> Path:
    """Write OUT/checkpoints/step-N from every rank, atomically; point `latest` at it and prune old ones."""
    import torch.distributed.checkpoint as dcp

    here = distributed.world()
    root = checkpoint_root(out)
    final = root / f"step-{state.step:06d}"
    if distributed.broadcast_object(final.exists()):
        return final  # this step is already saved
    tmp = root / f".tmp-step-{state.step:06d}"
    # No gradients left over (an early-stopped minibatch): DCP initializes an optimizer that never stepped only
    # when there are none, and a checkpoint must hold the optimizer's state.
    state.optimizer.zero_grad(set_to_none=True)
    if here.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    distributed.barrier()
    _, model_state, optimizer_state = trained_tensors(state)
    with quiet_without_process_group():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp / "weights"))
    torch.save(rng_state(state), tmp / "rng" / f"rank-{here.rank:05d}.pt")
    distributed.barrier()
    if here.is_main:
        torch.save(trainer_state(state, here.size), tmp / COMPLETE)
        os.rename(tmp, final)
        write_text_atomic(root / "latest", final.name)
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint saved", extra={"step": state.step, "path": str(final), "ranks": here.size})
    distributed.barrier()
    return final


def trainer_state(state, world_size: int) -> dict:
    return {
        "step": state.step,
        "critic": state.value is not None,
        "lora_r": state.options.lora_r,  # what the weights hold: whole models, or adapters
        "world_size": world_size,
        "scheduler": state.scheduler.state_dict(),
        "kl_coef": state.kl_ctl.value,
        "prompt_cursor": state.prompts.cursor,
        "ptx_cursor": state.ptx.cursor if state.ptx else 0,
        "shuffle": state.generator.get_state(),  # the same on every rank: all ranks see the same minibatches
    }


def saved_tensors(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The model tensors a checkpoint holds (policy.*, value.*) and their whole shapes, from DCP's metadata."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(Path(path) / "weights")).read_metadata()
    return {
        name.removeprefix("model."): tuple(getattr(item, "size", ()))
        for name, item in metadata.state_dict_metadata.items()
        if name.startswith("model.")
    }


def read_trainer_state(path: Path) -> dict:
    if not (path / "weights").is_dir():
        raise UserError(f"--resume: {path} is not a checkpoint this version of rlhf reads (no weights/ dir)")
    return torch.load(path / COMPLETE, weights_only=True)


def load_checkpoint(state, path: Path) -> None:
    """Every rank reads its shards of the checkpoint into the freshly built state (DCP reshards from the world
    size that wrote it), and its random state (rank 0's, for a rank the writing run did not have)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    saved = read_trainer_state(path)
    modules, model_state, optimizer_state = trained_tensors(state)
    wanted = {"model": model_state, "optimizer": optimizer_state}
    try:
        with quiet_without_process_group():
            dcp.load(wanted, checkpoint_id=str(path / "weights"))
    except Exception as err:  # DCP reports a tensor the checkpoint lacks as a CheckpointException
        if "missing" in str(err).lower():
            raise UserError(
                f"--resume: {path} holds other tensors than this run trains (other --lora-* settings, or another model)"
            ) from None
        raise
    set_state_dict(
        modules,
        state.optimizer,
        model_state_dict=wanted["model"],
        optim_state_dict=wanted["optimizer"],
        options=StateDictOptions(strict=False),
    )
    state.step = saved["step"]
    state.scheduler.load_state_dict(saved["scheduler"])
    state.kl_ctl.value = saved["kl_coef"]
    state.prompts.cursor = saved["prompt_cursor"]
    if state.ptx:
        state.ptx.cursor = saved["ptx_cursor"]
    state.generator.set_state(saved["shuffle"])
    rank_file = path / "rng" / f"rank-{distributed.world().rank:05d}.pt"
    rng = torch.load(rank_file if rank_file.exists() else path / "rng" / "rank-00000.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    log.info(
        "resumed",
        extra={
            "step": state.step,
            "path": str(path),
            "written_by_ranks": saved.get("world_size", 1),
            "ranks": distributed.world().size,
        },
    )
