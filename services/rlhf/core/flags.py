"""CLI flags generated from a settings dataclass: one --flag per field, --help from the field's docstring.

    @dataclass
    class TrainConfig:
        REQUIRED: ClassVar[tuple[str, ...]] = ("model",)
        model: str = ""
        \"\"\"where training starts\"\"\"
        lr: float = 1e-5
        \"\"\"learning rate\"\"\"

    add_config_arguments(parser, TrainConfig)    # --model (required), --lr
    config = config_from_args(parser.parse_args(), TrainConfig)

bool fields become --flag (off by default) or --flag/--no-flag (on by default), and Literal fields get
choices. `rlhf --help` shows each default (rlhf.cli.DefaultsShownFormatter); a None default is left
out ("off", or as the docstring says).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Literal, get_args, get_origin, get_type_hints


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


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field of `cls` (underscores become dashes); the fields in `cls.REQUIRED` must be given."""
    docs, hints, required = field_docs(cls), get_type_hints(cls), getattr(cls, "REQUIRED", ())
    for f in dataclasses.fields(cls):
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        help_text = docs.get(f.name, "")
        if hint is bool:  # --flag for an option that is off by default, --no-flag for one that is on
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, action=action, default=f.default, help=help_text)
        elif get_origin(hint) is Literal:
            parser.add_argument(flag, choices=get_args(hint), default=f.default, help=help_text)
        elif f.name in required:
            parser.add_argument(flag, type=str, required=True, help=help_text)
        else:
            kind = next(t for t in (int, float, str) if t == hint or t in get_args(hint))
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)


def config_from_args(args: argparse.Namespace, cls: type):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
