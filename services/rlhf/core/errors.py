"""Errors that reach the user as one line, not a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment: printed as `rlhf: error: <message>`."""
