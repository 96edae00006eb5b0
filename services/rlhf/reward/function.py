"""Programmable rewards: a Python function served through rlhf.v1.RewardScoring, in place of a model.

    rlhf serve reward --function mypkg.rewards:exact_match --port 50051
    rlhf serve reward --function ./rewards.py:format_check

The function is `fn(prompts: list[str], responses: list[str]) -> list[float]`, called with a batch of
items (the same dynamic batching as a model). Rule-based and verifiable rewards fit here: exact-match
answers, format checks, unit tests. Its module is imported with the working directory on sys.path (a
`path/to/file.py` works too). What it raises, or returns wrong (not a list of one finite number per
item), fails that batch with a clear status, and the server keeps serving.

Conversational prompts (ScoreItem.prompt_messages) reach it as text, one "role: content" line per message
and then "assistant: " (rlhf.core.chat.plain_prompt), with the response as sent. A function that declares a
`messages` parameter also gets, per item, the prompt's messages as a list of {"role", "content"} dicts (None
for a text prompt):

    def judge(prompts, responses, messages=None): ...
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from rlhf.core.errors import StatusError, UserError
from rlhf.v1 import common_pb2

FLOAT32_MAX = 3.4028234663852886e38  # scores travel as proto `float`: larger ones would arrive as inf
RewardFunction = Callable[[list[str], list[str]], Sequence[float]]


class RewardFunctionFailed(StatusError):
    """The function raised (INTERNAL) or returned something other than one finite number per item
    (FAILED_PRECONDITION: the function must be fixed)."""


def load_reward_function(spec: str) -> RewardFunction:
    """`PKG.MODULE:FN` or `path/to/file.py:FN` -> the function; one-line UserError otherwise."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--function {spec!r}: expected PKG.MODULE:FN (or path/to/file.py:FN)")
    try:
        module = _import(module_name)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the module raises on import, in one line
        raise UserError(f"--function {spec}: cannot import {module_name}: {type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserError(f"--function {spec}: {module_name} has no attribute {attr!r}")
    if not callable(fn):
        raise UserError(f"--function {spec}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def _import(module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UserError(f"--function: no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: the user's own modules import
    return importlib.import_module(module_name)


def checked_scores(out: object, count: int) -> list[float]:
    """The function's output as floats, or RewardFunctionFailed saying what is wrong with it."""

    def bad(what: str) -> RewardFunctionFailed:
        return RewardFunctionFailed(grpc.StatusCode.FAILED_PRECONDITION, f"the reward function returned {what}")

    if hasattr(out, "tolist"):  # a numpy array or a torch tensor
        out = out.tolist()
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise bad(f"a {type(out).__name__}, not a list of {count} numbers")
    if len(out) != count:
        raise bad(f"{len(out)} scores for {count} items")
    scores = []
    for i, value in enumerate(out):
        if not isinstance(value, numbers.Real):
            raise bad(f"a {type(value).__name__} ({value!r:.40}) at index {i}, not a number")
        try:
            score = float(value)
        except OverflowError:  # an int beyond any float
            score = math.inf
        if not math.isfinite(score) or abs(score) > FLOAT32_MAX:
            raise bad(f"{score:.6g} at index {i}; scores must be finite float32 values")
        scores.append(score)
    return scores


def function_version(fn: RewardFunction) -> str:
    """A content hash of the function's source (its module's file if it has one): changes when the code does."""
    try:
        source = inspect.getsource(inspect.getmodule(fn) or fn)
    except (OSError, TypeError):
        source = repr(fn)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class FunctionScorer:
    """The WorkerPool interface (score_batch, info, model_version, device, close) over a Python function."""

    def __init__(self, spec: str):
        self.spec, self.fn = spec, load_reward_function(spec)
        self.model_version = function_version(self.fn)
        self.device = "cpu"
        self.info = common_pb2.ModelInfo(model_name=f"function:{spec}", model_version=self.model_version, device="cpu")

    @property
    def wants_messages(self) -> bool:
        try:
            return "messages" in inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return False

    def score_batch(self, items: Sequence[tuple]) -> list[tuple[float, bool]]:
        """Items are (prompt, response) or (prompt, response, messages or None)."""
        prompts, responses = [item[0] for item in items], [item[1] for item in items]
        extra = {"messages": [item[2] if len(item) > 2 else None for item in items]} if self.wants_messages else {}
        try:
            out = self.fn(prompts, responses, **extra)
        except BaseException as err:  # noqa: BLE001 - even sys.exit() in the function must not stop the server
            raise RewardFunctionFailed(
                grpc.StatusCode.INTERNAL, f"the reward function raised {type(err).__name__}: {err}"
            ) from err
        return [(score, False) for score in checked_scores(out, len(items))]

    def close(self) -> None:
        """Nothing to release."""
