"""A console that can vanish without taking the run with it.

``accelerate launch train.py 2>&1 | tee log`` then Ctrl-C: the terminal's SIGINT also ends ``tee``, so the next
progress-bar or log line written to the pipe raises BrokenPipeError, and the run would die before it saved
its checkpoint. A hung-up terminal (ssh drop) gives EIO the same way. Once a standard stream's reader is
gone, nobody can read what is written there, so its file descriptor is pointed at /dev/null and the run
carries on (to its checkpoint, or to the end): files on disk, not the console, hold the results.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GONE = (errno.EPIPE, errno.EIO, errno.ENXIO)


class SurvivingStream:
    """Wraps ``sys.stdout`` / ``sys.stderr``; a write to a reader that is gone is dropped, not raised."""

    def __init__(self, stream: Any):
        self._stream = stream
        self.gone = False

    def _silence(self) -> None:
        self.gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # what is still buffered drains there, at exit too
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._stream, name)(*args)
        except OSError as exc:
            if exc.errno not in GONE:
                raise
            self._silence()
            try:  # the text still in the stream's buffer now drains into /dev/null
                self._stream.flush()
            except (OSError, ValueError):
                pass
            return len(args[0]) if args else None

    def write(self, text: str) -> int:
        return self._call("write", text)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect_standard_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` survive their reader going away (idempotent). Call it before
    logging handlers or progress bars capture the streams."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, SurvivingStream) and _has_fd(stream):
            setattr(sys, name, SurvivingStream(stream))


def _has_fd(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (OSError, ValueError, AttributeError):  # pytest's capture, io.StringIO: nothing to protect
        return False


def quiet_known_noise() -> None:
    """Silence messages that are harmless here and only alarm users: bitsandbytes warns on import that it cannot
    fetch an optional CPU kernel from the Hub (its built-in kernels are used instead; kernels, which fetches it,
    says offline that it skips a Hub check), and peft calls a
    transformers method that transformers deprecates."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # kernels >= 0.19 (which bitsandbytes asks for that kernel) says it skips the Hub's publisher check offline
    logging.getLogger("kernels").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Only errors from transformers meanwhile: loading a run's base reports its task head as MISSING and newly
    initialised, which is true but alarming, since the run's trained head is loaded over it next."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
