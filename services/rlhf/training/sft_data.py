"""SFT rows, standard and conversational, and the token ids and loss mask each becomes.

    {"prompt": "...", "response": "..."}               # standard ("completion" for "response"): loss on the response
    {"text": "..."}                                     # plain text: loss on every token
    {"messages": [{"role": ..., "content": ...}, ...]}  # conversational: loss on the assistant turns
    {"prompt": [messages], "completion": [messages]}    # conversational: loss on the completion

--loss-on assistant|completion|all moves the loss: the assistant turns (a standard row: its response), the
completion (a "messages" row: its last turn, which must be the assistant's), or every token. One file holds one
kind: standard or conversational rows, not both.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.core.chat import Conversation, is_conversation, message_spans, parse_conversation
from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl
from rlhf.core.text import Encoded, encode_pair, encode_prompt, encode_response, truncate_left

LOSS_ON = ("assistant", "completion", "all")


@dataclass(frozen=True)
class ChatRow:
    messages: Conversation
    completion_start: int  # index of the first completion message
    default_loss_on: str  # "assistant" for a "messages" row, "completion" for a prompt-completion row
    where: str  # "file:line", for rendering errors


@dataclass
class Example:
    input_ids: list[int]
    trained: list[bool]  # per token: does it count towards the loss


SFTRow = tuple[str | None, str] | ChatRow  # (prompt, response), (None, text), or a conversation


def check_loss_on(loss_on: str | None) -> None:
    if loss_on is not None and loss_on not in LOSS_ON:
        raise UserError(f"--loss-on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")


def load_rows(path) -> list[SFTRow]:
    """The rows of an SFT file; a bad line is a one-line error naming it and its field."""
    rows: list[SFTRow] = []
    kinds = set()
    for where, row in read_jsonl(path):
        parsed = parse_row(row, where)
        kinds.add(isinstance(parsed, ChatRow))
        if len(kinds) > 1:
            raise UserError(f"{where}: standard (string) and conversational (messages) rows are mixed in one file")
        rows.append(parsed)
    if not rows:
        raise UserError(f"{path} holds no examples")
    return rows


def parse_row(row: dict, where: str) -> SFTRow:
    if "messages" in row:
        messages = parse_conversation(row["messages"], where, "messages")
        if messages[-1][0] != "assistant":
            raise UserError(f"{where}: field 'messages' must end with an assistant turn to learn from")
        return ChatRow(messages, len(messages) - 1, "assistant", where)
    completion = row.get("completion", row.get("response"))
    if is_conversation(row.get("prompt")) or is_conversation(completion):
        prompt = parse_conversation(row.get("prompt"), where, "prompt")
        completion = parse_conversation(completion, where, "completion")
        if not any(role == "assistant" for role, _ in completion):
            raise UserError(f"{where}: field 'completion' has no assistant turn to learn from")
        return ChatRow(prompt + completion, len(prompt), "completion", where)
    if set(row) == {"text"} and isinstance(row["text"], str):
        return (None, row["text"])
    if not isinstance(row.get("prompt"), str) or not isinstance(completion, str):
        raise UserError(
            f'{where}: expected string fields "prompt" and "response" (or "completion"), or "text" alone, '
            'or conversations: "messages", or "prompt" and "completion"'
        )
    return (row["prompt"], completion)


def encode_row(tokenizer, row: SFTRow, max_length: int, loss_on: str | None = None) -> Example:
    """Token ids and loss mask; over-long rows keep their end (rlhf.core.text's policy)."""
    if isinstance(row, ChatRow):
        return encode_chat(tokenizer, row, max_length, loss_on)
    prompt, response = row
    if prompt is None:
        return as_example(encode_text(tokenizer, response, max_length), every_token=True)
    return as_example(encode_pair(tokenizer, prompt, response, max_length), every_token=loss_on == "all")


def as_example(encoded: Encoded, every_token: bool = False) -> Example:
    """A standard pair's ids: the loss on the response (and on the prompt too with every_token)."""
    trained = [every_token] * len(encoded.prompt_ids) + [True] * len(encoded.response_ids)
    return Example(encoded.input_ids, trained)


def encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """A {"text"} row: the tokenizer's own prompt for no text (BOS, where it adds one), then the text and EOS;
    a text longer than max_length keeps its start, as pretraining does (a pair keeps the end of its prompt)."""
    prompt = encode_prompt(tokenizer, "")[:1]
    response = encode_response(tokenizer, text)
    room = max(max_length - len(prompt), 1)
    return Encoded(prompt, response[:room], truncated=len(response) > room)


def trained_spans(row: ChatRow, spans: list[tuple[int, int]], length: int, loss_on: str) -> list[tuple[int, int]]:
    """The character ranges the loss falls on."""
    if loss_on == "all":
        return [(0, length)]
    if loss_on == "completion":
        return [(spans[row.completion_start][0], length)]
    return [span for (role, _), span in zip(row.messages, spans, strict=True) if role == "assistant"]


def encode_chat(tokenizer, row: ChatRow, max_length: int, loss_on: str | None) -> Example:
    """The rendered conversation, tokenized segment by segment at the trained spans' edges (so that no token
    straddles an edge), the first segment as a prompt (with the BOS the tokenizer adds)."""
    text, spans = message_spans(tokenizer, row.messages, row.where)
    trained = trained_spans(row, spans, len(text), loss_on or row.default_loss_on)
    edges = sorted({0, len(text), *(i for span in trained for i in span)})
    ids: list[int] = []
    mask: list[bool] = []
    for start, end in zip(edges, edges[1:], strict=False):
        piece = tokenizer(text[start:end], add_special_tokens=start == 0)["input_ids"]
        ids += piece
        mask += [any(a <= start and end <= b for a, b in trained)] * len(piece)
    kept = truncate_left([], ids, max_length).response_ids
    return Example(kept, mask[len(mask) - len(kept) :])
