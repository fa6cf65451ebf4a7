"""Host memory release: when it trims, how its slack adapts, and that glibc's malloc_trim is found where it exists."""

import sys

import pytest

from peftkit import memory


class FakeProcess:
    """Resident memory the test sets by hand; trimming drops it to ``live``."""

    def __init__(self, rss: int, live: int) -> None:
        self.rss, self.live, self.trims = rss, live, 0

    def trim(self, pad: int) -> int:
        assert pad == 0
        self.trims += 1
        self.rss = self.live
        return 1


MiB = 2**20


@pytest.fixture
def fake(monkeypatch):
    proc = FakeProcess(rss=500 * MiB, live=500 * MiB)
    monkeypatch.setattr(memory, "resident_bytes", lambda: proc.rss)
    monkeypatch.setattr(memory, "_malloc_trim", lambda: proc.trim)
    return proc


def test_trims_only_once_freed_memory_has_piled_up(fake):
    host = memory.HostMemory(slack=64 * MiB, every=1)
    host.enable(True)
    fake.rss = 550 * MiB  # under the slack: nothing to gain
    host.release()
    assert fake.trims == 0
    fake.rss = 600 * MiB
    host.release()
    assert (fake.trims, host.calls, fake.rss) == (1, 1, 500 * MiB)


def test_trims_are_spaced_so_steps_do_not_refault_their_working_set_each_time(fake):
    host = memory.HostMemory(slack=64 * MiB, every=4)
    host.enable(True)
    for call in range(1, 13):
        fake.rss = 800 * MiB  # each step leaves its 300 MiB working set with the allocator
        host.release()
        assert fake.trims == call // 4, call


def test_disabled_never_trims(fake):
    host = memory.HostMemory(slack=1, every=1)
    host.enable(False)
    fake.rss = 10_000 * MiB
    host.release()
    assert fake.trims == 0 and host.calls == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is a Linux C library")
def test_glibc_malloc_trim_is_found_and_runs():
    trim = memory._malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
    assert memory.resident_bytes() > 0


def test_each_run_counts_only_its_own_trims(monkeypatch):
    """results.json's host_memory_trims is the run's: a second run in one process (a test, a notebook) starts at 0."""
    from peftkit import memory

    host = memory.HostMemory(slack=0, every=1)
    monkeypatch.setattr(memory, "_malloc_trim", lambda: (lambda pad: 1))
    sizes = iter(range(0, 10**9, 10**6))
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(sizes))
    host.enable(True)
    for _ in range(3):
        host.release()
    assert host.calls == 3
    host.enable(True)  # the next run
    host.release()
    assert host.calls == 1
