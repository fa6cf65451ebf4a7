"""Signals during training become a checkpointed stop: which ones, who says so, and what stays ignored."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from peftkit.interrupt import StopRequest


@pytest.fixture(autouse=True)
def as_in_a_terminal():
    """Signals as a terminal leaves them, even when the tests run in the background (where a shell ignores SIGINT)
    or under nohup (SIGHUP ignored)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def send(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread


@pytest.mark.parametrize("rank,announced", [("0", 1), ("1", 0)])
def test_every_process_stops_but_only_a_machines_first_one_says_so(monkeypatch, caplog, rank, announced):
    monkeypatch.setenv("LOCAL_RANK", rank)
    caplog.set_level(logging.WARNING, logger="peftkit.interrupt")
    with StopRequest() as stop:
        send(signal.SIGINT)
    assert stop.signum == signal.SIGINT
    assert sum("SIGINT received" in r.getMessage() for r in caplog.records) == announced


def test_a_hangup_stops_with_a_checkpoint_unless_the_user_ignores_it():
    previous = signal.getsignal(signal.SIGHUP)
    try:
        with StopRequest() as stop:  # an ssh connection dropped: save and stop, as for SIGTERM
            send(signal.SIGHUP)
        assert stop.signum == signal.SIGHUP
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does
        with StopRequest() as stop:
            send(signal.SIGHUP)
        assert stop.signum == 0  # training goes on to the end
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_stream_whose_reader_is_gone_drops_writes_instead_of_raising():
    from peftkit.console import SurvivingStream

    read_end, write_end = os.pipe()
    stream = SurvivingStream(os.fdopen(write_end, "w", buffering=1))
    stream.write("read by someone\n")
    assert os.read(read_end, 100) == b"read by someone\n"
    os.close(read_end)  # `tee` died with the terminal's Ctrl-C
    for _ in range(3):
        assert stream.write("progress bar\n") == len("progress bar\n")  # no BrokenPipeError
    stream.flush()
    assert stream.gone
    stream.close()
