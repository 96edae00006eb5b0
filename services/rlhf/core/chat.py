"""Conversations: checked messages, rendered with the model's chat template, the same way in every stage.

A conversation is a list of {"role", "content"} messages, as in TRL's conversational datasets:

    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", ...}]

It becomes text through the tokenizer's own chat template, or a Jinja file given with --chat-template, and that
text is tokenized as plain text is (rlhf.core.text). Each model renders with its own template: the policy's
rendering is the policy's, the reward model re-renders the same messages with its own.

Spans come from rendering prefixes of the conversation and diffing their lengths (robust to any template that
renders incrementally; `{% generation %}` tags are rare): an assistant message's span starts after its header
(the generation prompt), any other's where the previous turn ended, and each runs to the end of its turn,
end-of-turn marker included.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlhf.core.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
Message = tuple[str, str]  # (role, content): hashable, so items dedupe as strings do
Conversation = tuple[Message, ...]


def is_conversation(value) -> bool:
    """A list (the conversational form) rather than a string (the standard form)."""
    return isinstance(value, list | tuple) and not isinstance(value, str)


def parse_conversation(value, where: str, field: str) -> Conversation:
    """Checked messages; a bad one is a one-line error naming the row (`where`), the field and the message."""
    if not is_conversation(value) or not value:
        raise UserError(f"{where}: field '{field}' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise UserError(f"{where}: field '{field}'[{i}] must be an object with string 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise UserError(f"{where}: field '{field}'[{i}] has unknown role {role!r} (one of {', '.join(ROLES)})")
        messages.append((role, message["content"]))
    return tuple(messages)


def as_dicts(conversation: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in conversation]


def use_chat_template(tokenizer, path: str | Path | None):
    """The tokenizer, with the Jinja template in `path` (--chat-template) in place of its own when given."""
    if path:
        try:
            tokenizer.chat_template = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise UserError(f"cannot read --chat-template {path}: {err.strerror}") from err
    return tokenizer


def render(tokenizer, conversation: Sequence[Message], generation_prompt: bool = False, where: str = "") -> str:
    """The conversation as the model's template writes it (plus the assistant header with generation_prompt).

    A leading BOS the template writes is dropped when the tokenizer adds one itself, so that tokenizing the text
    as a prompt (rlhf.core.text.encode_prompt) gives one BOS, not two."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{where or 'conversations'}: the model's tokenizer has no chat template; "
            "give one with --chat-template FILE"
        )
    try:
        text = tokenizer.apply_chat_template(
            as_dicts(conversation), tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as err:  # noqa: BLE001 - jinja raises many types; the user needs one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{where or 'conversation'}: the chat template failed to render: {first}") from err
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def message_spans(tokenizer, conversation: Sequence[Message], where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per message, its (start, end) characters in it: from after the generation
    prompt for an assistant message (from the previous turn's end for any other) to the end of its turn."""
    text = render(tokenizer, conversation, where=where)
    spans = []
    for i, (role, _) in enumerate(conversation):
        head = render(tokenizer, conversation[:i], generation_prompt=role == "assistant", where=where) if i else ""
        upto = render(tokenizer, conversation[: i + 1], where=where)
        if not text.startswith(upto) or not upto.startswith(head):
            raise UserError(f"{where or 'conversation'}: the chat template does not render conversations turn by turn")
        spans.append((len(head), len(upto)))
    return text, spans


def render_completion(
    tokenizer, prompt: Sequence[Message], completion: Sequence[Message], where: str = ""
) -> tuple[str, str]:
    """(prompt text with the generation prompt, the completion's text after it): a prompt-completion pair as
    strings, to be tokenized as the standard form is."""
    head = render(tokenizer, prompt, generation_prompt=True, where=where)
    whole = render(tokenizer, tuple(prompt) + tuple(completion), where=where)
    if not whole.startswith(head):
        raise UserError(f"{where or 'conversation'}: the chat template's generation prompt does not start the reply")
    return head, whole[len(head) :]


def checked_request_messages(messages, what: str) -> Conversation:
    """A request's ChatMessage list, checked as rows are; a bad one is InvalidRequest (INVALID_ARGUMENT)."""
    from rlhf.core.checks import InvalidRequest

    try:
        return parse_conversation([{"role": m.role, "content": m.content} for m in messages], what, "messages")
    except UserError as err:
        raise InvalidRequest(str(err)) from err


def render_for_request(tokenizer, render_one, what: str):
    """render_one(tokenizer)'s text; a template that fails (or none) is InvalidRequest, not a server error."""
    from rlhf.core.checks import InvalidRequest

    try:
        return render_one(tokenizer)
    except UserError as err:
        raise InvalidRequest(f"{what}: {err}") from err


def plain_prompt(conversation: Sequence[Message]) -> str:
    """A model-free rendering (for reward functions): one "role: content" line per message, then "assistant: "."""
    return "".join(f"{role}: {content}\n" for role, content in conversation) + "assistant: "


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endofturn|>")  # ChatML, Llama 3, ...


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Where generation ends: EOS, the model's generation config's eos ids, and a chat template's end-of-turn
    token where the tokenizer has one as a special token (<|im_end|>, <|eot_id|>, ...)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured] if configured is not None else []
    special = set(tokenizer.all_special_tokens)
    ids += [tokenizer.convert_tokens_to_ids(t) for t in END_OF_TURN if t in special]
    return list(dict.fromkeys(ids))
