"""CLI flags generated from a settings dataclass: one --flag per field, --help from the field's docstring.

    @dataclass
    class TrainConfig:
        model: str
        \"\"\"where training starts\"\"\"
        lr: float = 1e-5
        \"\"\"learning rate\"\"\"
        token_file: str | None = setting(None, env="RLHF_TOKEN_FILE")
        \"\"\"bearer token file\"\"\"

    add_config_arguments(parser, TrainConfig)    # --model (required), --lr, --token-file
    config = config_from_args(parser.parse_args(), TrainConfig)

A field without a default (or named in `cls.REQUIRED`) is a required flag. bool fields become --flag (off by
default) or --flag/--no-flag (on by default), Literal fields get choices, and a field whose type is a dataclass
adds that dataclass's flags, their names prefixed (`setting(prefix=...)`, by default the field's name). `setting()`
says what a plain field cannot: a default read from an environment variable, another flag name, a metavar, a help
group, or no flag at all (a derived or programmatic setting). `rlhf --help` shows each default
(rlhf.cli.DefaultsShownFormatter); a None default is left out ("off", or as the docstring says).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import textwrap
from typing import Any, Literal, get_args, get_origin, get_type_hints


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    env: str | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    group: str | None = None,
    prefix: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with how its flag differs from the plain one:
    env: an environment variable that, where set, is the flag's default (the dataclass default stays as is);
    flag: the flag's name where it is not the field's; group: the --help group it is listed under;
    prefix: for a dataclass-typed field, what its fields' flags start with; cli=False: no flag."""
    metadata = {"env": env, "flag": flag, "metavar": metavar, "group": group, "prefix": prefix, "cli": cli}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, inherited ones too (Python keeps none at runtime, so read the
    source of every dataclass in the MRO)."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:], strict=False):
            is_docstring = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            if isinstance(node, ast.AnnAssign) and is_docstring and isinstance(following.value.value, str):
                docs[node.target.id] = following.value.value  # type: ignore[union-attr]
    return docs


@dataclasses.dataclass
class Flag:
    """One field's flag, as add_config_arguments adds it."""

    dest: str  # the attribute argparse sets: the field's name, after any prefix
    name: str  # --flag
    hint: Any  # the field's type
    default: Any  # the dataclass default, or the environment's value where `env` is set
    negatable: bool  # a bool that is on by default: --flag/--no-flag
    required: bool
    help: str
    metavar: str | None
    group: str | None


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are flags (not setting(cli=False), not init=False)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("cli", True)]


def config_flags(cls: type, prefix: str = "", group: str | None = None) -> list[Flag]:
    """The flag of every field of `cls`, and of the fields of its dataclass-typed fields, in field order."""
    docs, hints, flags = field_docs(cls), get_type_hints(cls), []
    for f in flag_fields(cls):
        hint, title = hints[f.name], f.metadata.get("group") or group
        if dataclasses.is_dataclass(hint):
            flags += config_flags(hint, prefix + (f.metadata.get("prefix") or f.name + "_"), title)
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        env = f.metadata.get("env")
        if env and os.environ.get(env):
            default = value_type(hint)(os.environ[env])
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        name = f.metadata.get("flag") or "--" + (prefix + f.name).replace("_", "-")
        flags.append(
            Flag(
                dest=prefix + f.name,
                name=name,
                hint=hint,
                default=default,
                negatable=hint is bool and bool(default),
                required=no_default or f.name in getattr(cls, "REQUIRED", ()),
                help=docs.get(f.name, "") + (f" (env {env})" if env else ""),
                metavar=f.metadata.get("metavar")
                or (name[2:].upper().replace("-", "_") if f.metadata.get("flag") else None),
                group=title,
            )
        )
    return flags


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One --flag per field of `cls` (underscores become dashes), `prefix` before each name."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in config_flags(cls, prefix):
        target = parser
        if flag.group and isinstance(parser, argparse.ArgumentParser):  # argparse deprecates nested groups
            target = groups[flag.group] = groups.get(flag.group) or parser.add_argument_group(flag.group)
        common = {"dest": flag.dest, "help": flag.help, **({"metavar": flag.metavar} if flag.metavar else {})}
        if flag.required:
            target.add_argument(flag.name, type=value_type(flag.hint), required=True, **common)
        elif flag.hint is bool:  # --flag for an option that is off by default, --no-flag for one that is on
            common.pop("metavar", None)
            action = argparse.BooleanOptionalAction if flag.negatable else "store_true"
            target.add_argument(flag.name, action=action, default=flag.default, **common)
        elif choices(flag.hint):
            target.add_argument(flag.name, choices=choices(flag.hint), default=flag.default, **common)
        else:
            target.add_argument(flag.name, type=value_type(flag.hint), default=flag.default, **common)


def choices(hint: Any) -> tuple | None:
    """A Literal's values (`Literal[...] | None` too), or None."""
    literal = next((h for h in (hint, *get_args(hint)) if get_origin(h) is Literal), None)
    return get_args(literal) if literal else None


def value_type(hint: Any) -> type:
    """int, float or str: what a flag's text is parsed as (`int | None` is int, a Literal its values' type)."""
    if choices(hint):
        return type(choices(hint)[0])
    return next(t for t in (int, float, str) if t == hint or t in get_args(hint))


def config_from_args(args: argparse.Namespace, cls: type, prefix: str = ""):
    """`cls` from the parsed flags; a field whose flag `args` lacks keeps its default."""
    hints, values = get_type_hints(cls), {}
    for f in flag_fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = config_from_args(args, hints[f.name], prefix + (f.metadata.get("prefix") or f.name + "_"))
        elif hasattr(args, prefix + f.name):
            values[f.name] = getattr(args, prefix + f.name)
    return cls(**values)
