"""A reward function that asks for the messages (tests/reward/test_chat_services.py)."""


def turns(prompts, responses, messages=None):
    """The number of prompt messages (-1 for a text prompt), plus 0.5 when the prompt text ends as plain_prompt's."""
    return [
        (len(m) if m is not None else -1) + (0.5 if p.endswith("assistant: ") else 0.0)
        for p, m in zip(prompts, messages, strict=True)
    ]
