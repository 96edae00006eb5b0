"""Reward functions for `rlhf serve reward --function tests.reward.reward_functions:NAME` in the tests."""

from __future__ import annotations


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The response's length in characters: easy to check by hand."""
    return [float(len(r)) for r in responses]


def misbehaving(prompts: list[str], responses: list[str]):
    """Misbehaves on request: the response text says how."""
    how = responses[0]
    if how == "raise":
        raise ValueError("no reward for you")
    if how == "exit":
        raise SystemExit(3)  # must not take the server down
    if how == "nan":
        return [float("nan")] * len(responses)
    if how == "text":
        return ["high"] * len(responses)
    if how == "short":
        return [1.0] * (len(responses) - 1)
    if how == "dict":
        return {"score": 1.0}
    return [1.0] * len(responses)


NOT_A_FUNCTION = 42


def slow_length(prompts: list[str], responses: list[str]) -> list[float]:
    """length_reward, at 0.1 s a batch: a server that a burst of clients can overload."""
    import time

    time.sleep(0.1)
    return length_reward(prompts, responses)
