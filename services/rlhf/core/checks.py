"""Request checks shared by the model services: bad input becomes INVALID_ARGUMENT, never a crash."""

from __future__ import annotations

from collections.abc import Sequence


class InvalidRequest(ValueError):
    """Input a service refuses; the message says what is wrong (answered as INVALID_ARGUMENT)."""


def check_token_ids(ids: Sequence[int], vocab_size: int, what: str) -> None:
    """Non-empty, and every id inside the vocabulary [0, vocab_size)."""
    if not ids:
        raise InvalidRequest(f"{what} is empty")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"{what}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def check_fits_context(length: int, max_context: int, what: str) -> None:
    if length > max_context:
        raise InvalidRequest(f"{what} is {length} tokens, beyond the model context of {max_context}")


def check_item_count(count: int, limit: int | None, what: str = "items") -> None:
    """At least one item, and no more than the server's per-request limit (None: no limit)."""
    if count == 0:
        raise InvalidRequest(f"empty batch: no {what}")
    if limit is not None and count > limit:
        raise InvalidRequest(f"{count} {what} is over the limit of {limit} {what} per request (split the request)")
