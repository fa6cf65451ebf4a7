"""Memory sizes as people write them (``24GiB``, ``80GB``) and as peftkit prints them."""

from __future__ import annotations

from peftkit.errors import check

MiB, GiB = 2**20, 2**30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str, flag: str = "--memory") -> int:
    """``24GiB``, ``80GB``, ``16000MiB``, ``24G`` (binary) or a number of bytes, as bytes."""
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    check(value > 0 and unit in _UNITS, f"{flag} {text!r}: give a size such as 24GiB, 80GB or 16000MiB.")
    return int(value * _UNITS[unit])


def human_size(size: float) -> str:
    """Bytes as ``1.25 GiB`` (from 1 GiB) or ``312 MiB``."""
    return f"{size / GiB:.2f} GiB" if abs(size) >= GiB else f"{size / MiB:.0f} MiB"
