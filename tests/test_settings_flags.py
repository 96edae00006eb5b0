"""Each setting is defined once, as a config field: every flag of a stage, a service or a client command is a
field of the configs its command is built from (rlhf.core.flags), and every field of those configs has its flag.
Flags that are no setting, and fields that are no flag, are listed below with the reason."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf.cli import build_parser, every_parser
from rlhf.core.client import ClientOptions
from rlhf.core.flags import config_flags, field_docs, flag_fields
from rlhf.core.launch import LaunchOptions
from rlhf.core.server import ServerOptions
from rlhf.core.types import GenerationParams
from rlhf.demo.pipeline import DemoConfig
from rlhf.k8s.cli import stage_configs
from rlhf.label.config import ImportConfig, LabelConfig
from rlhf.learner.config import LearnerProcess, PPOConfig
from rlhf.policy.config import PolicyServiceConfig
from rlhf.reference.config import ReferenceServiceConfig
from rlhf.reward.config import RewardServiceConfig
from rlhf.toy.config import TinyModelConfig
from rlhf.training.config import DPOConfig, RewardTrainConfig, SFTConfig

LEARNER = (PPOConfig, ServerOptions, LearnerProcess, LaunchOptions)
CLIENT = (ClientOptions,)
COMMANDS: dict[str, tuple[type, ...]] = {
    "rlhf train sft": (SFTConfig, LaunchOptions),
    "rlhf train rm": (RewardTrainConfig, LaunchOptions),
    "rlhf train dpo": (DPOConfig,),
    "rlhf train ppo": LEARNER,
    "rlhf train grpo": LEARNER,
    "rlhf serve policy": (PolicyServiceConfig, ServerOptions),
    "rlhf serve reference": (ReferenceServiceConfig, ServerOptions),
    "rlhf serve reward": (RewardServiceConfig, ServerOptions),
    "rlhf generate": (GenerationParams, ClientOptions),
    "rlhf score": CLIENT,
    "rlhf logprobs": CLIENT,
    "rlhf learner status": CLIENT,
    "rlhf learner watch": CLIENT,
    "rlhf learner stop": CLIENT,
    "rlhf demo": (DemoConfig,),
    "rlhf tiny-model": (TinyModelConfig,),
    "rlhf label": (LabelConfig,),
    "rlhf data import": (ImportConfig,),
}

# Flags that are no config's field: what a command acts on, not how.
NOT_SETTINGS = {
    "--help": "argparse's own",
    "--log-level": "the rlhf command's, before any subcommand",
    "--target": "the server a client command talks to",
    "--prompt": "the input of a client command",
    "--response": "the input of a client command",
    "--input": "the input of a client command",
    "--messages": "the input of a client command",
    "--tokenizer": "`rlhf logprobs` decodes the reply with it",
    "--json": "how a client command prints its reply",
}
NOT_SETTINGS_OF = {  # the same, for one command
    "rlhf tiny-model": {"--out": "where the model is written, not what it is"},
    "rlhf data import": {"--from": "the format of the input: which importer reads it"},
}

# Config fields without a flag: set by code, not by hand.
NOT_FLAGS = {
    "ClientOptions.max_attempts": "gRPC's retry cap; lowered only by code (k8s status)",
    "ClientOptions.max_message_mb": "a client's limit follows the services' default",
    "ClientOptions.auth_token": "read from --auth-token-file",
    "DemoConfig.rm_epochs": "the demo's recipe, not a knob",
    "DemoConfig.timings": "filled in as the demo's stages run",
}

# Commands that are no stage, service or client: their flags belong to the command alone.
OTHER_COMMANDS = {"rlhf data synth", "rlhf k8s render", "rlhf k8s status", "rlhf k8s logs", "rlhf k8s delete"}
K8S_SUBMIT_OWN = {
    "--overlay", "--name", "--image", "--dry-run", "--component", "--manifests", "--namespace", "--kubeconfig",
    "--context", "--help",
}  # fmt: skip
K8S_SUBMIT_PPO_OWN = {"--nodes", "--gpus-per-node"}  # the learner's pods and processes per pod


def parsers():
    return {parser.prog: parser for parser in every_parser(build_parser())}


def options(parser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings if name.startswith("--")}


def config_flag_names(configs: tuple[type, ...]) -> set[str]:
    names = set()
    for flag in (flag for config in configs for flag in config_flags(config)):
        names |= {flag.name, "--no-" + flag.name[2:]} if flag.negatable else {flag.name}
    return names


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_flag_is_a_config_field_and_every_field_a_flag(prog):
    have = options(parsers()[prog]) - set(NOT_SETTINGS) - set(NOT_SETTINGS_OF.get(prog, {}))
    want = config_flag_names(COMMANDS[prog])
    assert have - want == set(), f"{prog}: flags that no config field defines"
    assert want - have == set(), f"{prog}: config fields without their flag"


def test_fields_without_a_flag_are_the_listed_ones():
    configs = {config for configs in COMMANDS.values() for config in configs}
    configs |= {hint for config in configs for hint in nested(config)}
    hidden = {
        f"{config.__name__}.{f.name}"
        for config in configs
        for f in dataclasses.fields(config)
        if f.init and f not in flag_fields(config)
    }
    assert hidden == set(NOT_FLAGS)


def nested(config: type) -> list[type]:
    from typing import get_type_hints

    return [h for h in get_type_hints(config).values() if dataclasses.is_dataclass(h)]


def test_every_command_with_flags_is_checked():
    unchecked = {
        prog
        for prog, parser in parsers().items()
        if options(parser) - set(NOT_SETTINGS) and prog not in COMMANDS and prog not in OTHER_COMMANDS
    }
    assert unchecked == {"rlhf k8s submit sft", "rlhf k8s submit rm", "rlhf k8s submit ppo"}


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_k8s_submit_takes_every_flag_of_its_stage(stage):
    """`rlhf k8s submit STAGE` takes the flags of `rlhf train STAGE` (but the launcher's: --nodes and
    --gpus-per-node say how many pods and processes), and its own."""
    train = options(parsers()[f"rlhf train {stage}"]) - config_flag_names((LaunchOptions,)) - set(NOT_SETTINGS)
    assert config_flag_names(stage_configs()[stage]) == train
    # a bool of the stage's that is off by default can be turned off too (the overlay's Job may turn it on)
    negations = {
        "--no-" + f.name[2:] for config in stage_configs()[stage] for f in config_flags(config) if f.hint is bool
    }
    assert options(parsers()[f"rlhf k8s submit {stage}"]) == train | negations | K8S_SUBMIT_OWN | (
        K8S_SUBMIT_PPO_OWN if stage == "ppo" else set()
    )


def test_every_flag_has_its_field_docstring_as_help():
    configs = {config for configs in COMMANDS.values() for config in configs}
    configs |= {hint for config in configs for hint in nested(config)} | {
        c for cs in stage_configs().values() for c in cs
    }
    undocumented = [
        f"{config.__name__}.{f.name}"
        for config in configs
        for f in flag_fields(config)
        if f.name not in field_docs(config)
    ]
    assert undocumented == []


def test_a_k8s_submit_bool_becomes_the_flag_that_rlhf_train_reads():
    from rlhf.k8s.cli import job_overrides
    from rlhf.k8s.manifests import merge_args

    args = build_parser().parse_args(
        ["k8s", "submit", "sft", "--no-merge", "--gradient-checkpointing", "--epochs", "2"]
    )
    merged = merge_args(["train", "sft", "--merge", "--epochs=1", "--lora-r=8"], job_overrides(args))
    assert merged == ["train", "sft", "--epochs=2", "--lora-r=8", "--gradient-checkpointing", "--no-merge"]
