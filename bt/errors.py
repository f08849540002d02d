"""Errors that end a run with a clear one-line message (never a traceback)."""


class BadInput(Exception):
    """The user's input (image file, option value) is unusable: exit status 2."""

    exit_status = 2


class VMMError(Exception):
    """The VMM itself failed (a bug or an unsupported situation): exit status 70."""

    exit_status = 70
