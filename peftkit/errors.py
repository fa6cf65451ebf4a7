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


def is_write_failure(exc: BaseException) -> bool:
    """A failed write as the libraries report it: an OSError (ENOSPC, EIO, EDQUOT), torch.save's RuntimeError
    ("PytorchStreamWriter failed writing file"), or safetensors' SafetensorError (an exception of its own)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    return (type(exc).__name__ == "SafetensorError"
            or (isinstance(exc, RuntimeError) and any(w in text for w in ("write", "writing", "no space", "file"))))


def write_failure(exc: BaseException, directory, what: str, kept: str) -> PeftkitError:
    """The one message for a failed write: what was being written, why, the free space left, what is intact."""
    import shutil

    try:
        free = f"{shutil.disk_usage(directory).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return PeftkitError(f"Could not write {what} in {str(directory)!r}: {reason} ({free} there). {kept} Free disk "
                        "space (or lower --save_total_limit), then run the same command again.")
