"""`rlhf train STAGE --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]`: torchrun, started for you.

    rlhf train ppo --nproc-per-node 2 ...                                        # 2 ranks on this machine
    rlhf train ppo --nnodes 2 --nproc-per-node 8 --rdzv-endpoint ppo-0.ppo-rdzv:29400 --rdzv-id ppo ...  # per pod

is `torchrun ... -m rlhf train ppo ...` with the same flags, plus what a Job needs from its first process:
- SIGTERM, SIGHUP and the first Ctrl-C go to the ranks themselves (torchrun runs in a session of its own), which
  finish their step, checkpoint together and exit 0, so the launcher exits 0; a second Ctrl-C aborts. (Under
  plain torchrun, torchrun gets the signal and gives the ranks --shutdown-timeout seconds, 30 by default, before
  it kills them: pass one that fits a step and a checkpoint.)
- a rank that dies makes torchrun stop the others (`--max-restarts 0`), and the launcher exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhf.core.flags import add_config_arguments, config_flags, setting

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
GROUP = "distributed (torchrun)"
SHUTDOWN_TIMEOUT_S = 10  # after a rank died: how long torchrun lets the others exit before SIGKILL


@dataclass
class LaunchOptions:
    """Every `rlhf train` stage's launcher flags: above one rank, torchrun starts the ranks."""

    nproc_per_node: int = setting(1, metavar="N", group=GROUP)
    """ranks on this machine (one per GPU): above 1, torchrun starts them"""
    nnodes: int = setting(1, metavar="M", group=GROUP)
    """machines (pods) in the run"""
    rdzv_endpoint: str | None = setting(None, metavar="HOST:PORT", group=GROUP)
    """c10d rendezvous, on the first machine (needed with --nnodes above 1)"""
    rdzv_id: str = setting("rlhf", group=GROUP)
    """the run's rendezvous id, the same on every machine"""


LAUNCH_FLAGS = {flag.name: 1 for flag in config_flags(LaunchOptions)}  # each takes one value


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, LaunchOptions)


def launched_by_torchrun() -> bool:
    """This process is one of torchrun's ranks (torch-free: every command asks, `rlhf k8s render` too)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def wants_launch(args: argparse.Namespace) -> bool:
    """A run of several ranks that torchrun has not started yet."""
    many = getattr(args, "nproc_per_node", 1) > 1 or getattr(args, "nnodes", 1) > 1
    return many and not launched_by_torchrun()


def torchrun_command(args: argparse.Namespace, argv: list[str]) -> list[str]:
    from rlhf.core.errors import UserError

    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise UserError("--nproc-per-node and --nnodes must be at least 1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={args.nproc_per_node}",
        f"--nnodes={args.nnodes}",
        "--max-restarts=0",
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
    ]
    if args.nnodes > 1:
        if not args.rdzv_endpoint:
            raise UserError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the first machine's)")
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}", f"--rdzv-id={args.rdzv_id}"]
    elif args.rdzv_endpoint:
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}", f"--rdzv-id={args.rdzv_id}"]
    else:
        command += ["--standalone"]
    return [*command, "-m", "rlhf", *without_launch_flags(argv)]


def without_launch_flags(argv: list[str]) -> list[str]:
    """argv less the launcher's own flags (`--flag V` and `--flag=V`): what every rank runs."""
    out, skip = [], 0
    for word in argv:
        if skip:
            skip -= 1
        elif word in LAUNCH_FLAGS:
            skip = LAUNCH_FLAGS[word]
        elif word.split("=", 1)[0] not in LAUNCH_FLAGS:
            out.append(word)
    return out


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid (torchrun's ranks), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run torchrun over argv; hand SIGTERM/SIGINT to the ranks; torchrun's exit status."""
    torchrun = subprocess.Popen(torchrun_command(args, argv), start_new_session=True)
    signals_seen = 0

    def forward(signum, frame) -> None:
        nonlocal signals_seen
        signals_seen += 1
        ranks = children_of(torchrun.pid)
        # the first: the ranks stop after this step with a checkpoint; a second Ctrl-C: they abort
        sent = signal.SIGINT if signum == signal.SIGINT and signals_seen > 1 else signal.SIGTERM
        for pid in ranks or [torchrun.pid]:
            with contextlib.suppress(ProcessLookupError):  # a rank that already exited
                os.kill(pid, sent)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        code = torchrun.wait()
        return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
