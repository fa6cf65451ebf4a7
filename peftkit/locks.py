"""One peftkit process at a time per output directory: an advisory file lock that names its holder.

Two training runs started into one --output_dir would share its best-weights file, replace each other's
checkpoints and delete each other's files at the end, and both report success. The lock (``fcntl.flock`` on a
file in the directory) goes with the process however it ends, kill -9 included; the file keeps who held it
last, so that a refusal can say which process to wait for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from peftkit.errors import PeftkitError

LOCK_FILE = ".peftkit.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{' '.join(info['command'])[:200]}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said which yet"


@contextlib.contextmanager
def exclusive(directory: Path, what: str, lock_file: str = LOCK_FILE) -> Iterator[None]:
    """Hold ``directory``'s lock while the block runs, or refuse at once (``what``: the kind of work, for the
    message). The directory is created if needed; one this call created and nothing else wrote to is removed
    again if the block fails, so a refused or failed start leaves no empty run directory behind."""
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / lock_file
    fh = open(path, "a+")  # noqa: SIM115 - held open for the whole block: the lock lives as long as the descriptor
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PeftkitError(f"Another peftkit process is working in {str(directory)!r} ({_holder(path)}). "
                               f"Wait for it to finish, or give this {what} another --output_dir.") from exc
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv}))
        fh.flush()
        try:
            yield
        except BaseException:
            if created and {p.name for p in directory.iterdir()} <= {lock_file}:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
    finally:
        fh.close()
