"""User-facing errors: what went wrong, with what value, and what to do."""

from __future__ import annotations


class PeftkitError(Exception):
    """An input or configuration mistake the user can fix.

    The CLI prints the message without a traceback (unless ``--debug``) and exits non-zero.
    """

    exit_code = 2


def check(condition: bool, message: str) -> None:
    """Raise a :class:`PeftkitError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise PeftkitError(message)
