"""SIGINT / SIGTERM / SIGHUP during training: finish the current optimizer step, save a checkpoint, then stop."""

from __future__ import annotations

import logging
import os
import signal
import threading

from peftkit.errors import PeftkitError

logger = logging.getLogger(__name__)
# SIGHUP: the terminal hung up (an ssh connection dropped). A signal the user chose to ignore (`nohup` ignores
# SIGHUP) stays ignored: training then goes on to the end.
SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


class TrainingInterrupted(PeftkitError):
    """Raised once the checkpoint is on disk; exits 128 + the signal number, as a killed process would."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Context manager that turns the first SIGINT/SIGTERM/SIGHUP into a request the training loop polls.

    A second Ctrl-C stops at once (its usual meaning). Outside the main thread signals cannot be caught,
    and nothing is installed.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum:
            # Ctrl-C pressed again: stop at once. Not under torchrun (behind `accelerate launch` with several
            # processes): it forwards the user's Ctrl-C to its workers, so each sees it twice, and it enforces
            # its own deadline (SIGKILL after TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default).
            if signum == signal.SIGINT and "TORCHELASTIC_RUN_ID" not in os.environ:
                self.__exit__()
                raise KeyboardInterrupt
            return
        self.signum = signum
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return  # every process of a machine gets the signal; its first process says so for all
        logger.warning("%s received: finishing the current step and saving a checkpoint (send it again to stop "
                       "at once, without saving).", signal.Signals(signum).name)
