"""The shell inside the Jobs, run here with stand-ins for `rlhf` and `tini` on PATH.

- The ppo Job adds --resume exactly when --out holds a complete checkpoint, so deleting the Job and
  creating it again continues the run, while the first run starts fresh.
- A learner of several pods waits for the rendezvous host's DNS name before it starts.
- The kind setup Job publishes each model dir whole (DIR.tmp, then a rename), and a retry skips
  what is done.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from rlhf.k8s.manifests import merge_args
from tests.k8s.manifests import main_container, needs_kubectl, of_kind, rendered

pytestmark = needs_kubectl

FAKE_TINI = """#!/bin/sh
# stand-in for `tini -- COMMAND`: print COMMAND, one word a line
shift
printf '%s\\n' "$@"
"""

# Stand-in for `rlhf`: logs its command line, fails when told to, else writes what the real
# command would leave in --out (the last argument).
FAKE_RLHF = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 3 ;; esac
for out; do :; done
mkdir -p "$out"
case "$*" in
  "data synth"*) touch "$out/sft.jsonl" "$out/preferences.jsonl" "$out/prompts.jsonl" ;;
  *) echo '{}' > "$out/config.json" ;;
esac
"""


# Stand-in for `getent hosts NAME`: logs NAME to $LOOKUPS, and resolves once asked more than $RESOLVE_AFTER times.
FAKE_GETENT = """#!/bin/sh
[ -n "$LOOKUPS" ] || exit 0
echo "$2" >> "$LOOKUPS"
[ "$(wc -l < "$LOOKUPS")" -gt "${RESOLVE_AFTER:-0}" ]
"""


def write_script(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir, "tini", FAKE_TINI)
    write_script(bin_dir, "rlhf", FAKE_RLHF)
    write_script(bin_dir, "getent", FAKE_GETENT)
    write_script(bin_dir, "sleep", "#!/bin/sh\n")  # waits take no time here
    return bin_dir


def run_container(container: dict, fake_bin: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        container["command"] + container.get("args", []),
        env={"PATH": f"{fake_bin}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("overlay", ["kind/jobs", "gpu/jobs"])
def test_the_ppo_job_resumes_only_from_a_complete_checkpoint(overlay, fake_bin, tmp_path):
    container = dict(main_container(of_kind(rendered(overlay), "Job")["ppo"]))
    out = tmp_path / "run"
    container["args"] = merge_args(container["args"], {"out": str(out)})
    expected = ["rlhf", *container["args"], "--overwrite"]

    first = run_container(container, fake_bin)
    assert first.returncode == 0, first.stderr
    # a fresh run: no --resume, and --overwrite so that a retry of an attempt that died before its first
    # checkpoint (leaving metrics and TensorBoard files) starts over instead of being refused
    assert first.stdout.split("\n")[:-1] == expected

    (out / "checkpoints" / ".tmp-step-000005-7").mkdir(parents=True)  # a save cut short
    assert run_container(container, fake_bin).stdout.split("\n")[:-1] == expected

    step = out / "checkpoints" / "step-000005"
    step.mkdir()
    (step / "trainer_state.pt").write_bytes(b"")
    again = run_container(container, fake_bin)
    assert again.stdout.split("\n")[:-1] == [*expected[:-1], "--resume"]


def test_each_learner_pod_waits_for_the_rendezvous_host_to_resolve(fake_bin, tmp_path):
    container = dict(main_container(of_kind(rendered("kind/jobs"), "Job")["ppo"]))
    container["args"] = merge_args(container["args"], {"out": str(tmp_path / "run")})
    lookups = tmp_path / "lookups"
    waited = run_container(container, fake_bin, LOOKUPS=str(lookups), RESOLVE_AFTER="3")
    assert waited.returncode == 0, waited.stderr
    assert lookups.read_text().split() == ["ppo-0.ppo-rdzv"] * 4  # the host of --rdzv-endpoint, without the port
    assert waited.stdout.split("\n")[0] == "rlhf"  # then the learner starts

    lookups.unlink()
    never = run_container(container, fake_bin, LOOKUPS=str(lookups), RESOLVE_AFTER="100000")
    assert never.returncode == 1 and "rendezvous host ppo-0.ppo-rdzv does not resolve" in never.stderr
    assert never.stdout == ""  # the learner never started

    lookups.unlink()
    one_pod = dict(
        container,
        args=merge_args(
            container["args"], dict.fromkeys(["nnodes", "nproc-per-node", "rdzv-endpoint", "rdzv-id"], False)
        ),
    )
    assert run_container(one_pod, fake_bin, LOOKUPS=str(lookups)).returncode == 0
    assert not lookups.exists()  # the plain learner looks nothing up


def setup_container(data: Path) -> dict:
    """The kind setup Job's container, pointed at a temporary dir instead of the volume."""
    container = dict(main_container(of_kind(rendered("kind"), "Job")["setup"]))
    container["args"] = [re.sub(r"/data(?=/|\s|$)", str(data), container["args"][0])]
    return container


def test_the_setup_job_publishes_whole_dirs_and_a_retry_skips_what_is_done(fake_bin, tmp_path):
    data, calls = tmp_path / "data", tmp_path / "calls"
    container = setup_container(data)

    failed = run_container(container, fake_bin, CALLS=str(calls), FAIL_ON="train rm")
    assert failed.returncode != 0
    assert (data / "models" / "sft" / "config.json").exists()
    assert not (data / "models" / "rm").exists()  # nothing half-made where a server would look
    assert [line.split(" --out ")[0].split()[:3] for line in calls.read_text().splitlines()] == [
        ["data", "synth"],
        ["tiny-model"],
        ["train", "sft", "--model"],
        ["train", "rm", "--model"],
    ]

    calls.unlink()
    retried = run_container(container, fake_bin, CALLS=str(calls), FAIL_ON="")
    assert retried.returncode == 0, retried.stderr
    assert calls.read_text().splitlines() == [
        f"train rm --model {data}/models/sft --data {data}/datasets/preferences.jsonl --epochs 1 "
        f"--out {data}/models/rm.tmp"
    ]
    assert (data / "models" / "rm" / "config.json").exists()
    assert not list(data.rglob("*.tmp"))
    assert sorted(p.name for p in (data / "datasets").iterdir()) == ["preferences.jsonl", "prompts.jsonl", "sft.jsonl"]


@pytest.mark.parametrize("written", [None, "config.json", "adapter_config.json"])
def test_each_server_waits_for_a_model_dir_or_a_lora_adapter_dir(tmp_path, written):
    """The wait-for-model init containers end once the dir holds a model (config.json) or a LoRA adapter
    (adapter_config.json: `--lora-r` training writes that), and keep waiting before."""
    deployments = of_kind(rendered("kind"), "Deployment")
    for name, variable in (("policy", "POLICY_MODEL"), ("reward", "REWARD_MODEL"), ("reference", "REFERENCE_MODEL")):
        model = tmp_path / name
        model.mkdir()
        if written:
            (model / written).write_text("{}")
        wait = deployments[name]["spec"]["template"]["spec"]["initContainers"][0]["command"]
        try:
            done = subprocess.run(wait, env={**os.environ, variable: str(model)}, capture_output=True, timeout=3)
            finished = done.returncode == 0
        except subprocess.TimeoutExpired:
            finished = False
        assert finished == bool(written), (name, written)
