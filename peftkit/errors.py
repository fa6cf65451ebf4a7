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


def require(what: str, packages: dict[str, str], extra: str | None = None) -> None:
    """Refuse, before any work, when the modules ``packages`` names (module -> pip requirement) are not installed:
    with the exact command that installs them (and peftkit's extra that carries them, when there is one)."""
    import importlib.util

    missing = [req for module, req in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        command = "pip install " + " ".join(f'"{req}"' for req in missing)
        raise PeftkitError(f"{what} needs {', '.join(missing)}, which is not installed. Run: {command}"
                           + (f' (or install peftkit with its extra: pip install "peftkit[{extra}]")' if extra else "")
                           + ".")
