"""Errors that reach the user as one line, not a traceback, or as one gRPC status."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class UserError(Exception):
    """A problem with the user's input or environment: printed as `rlhf: error: <message>`."""


class StatusError(Exception):
    """A failure that names the gRPC status a service answers it with (rlhf.core.servicer)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
