"""The CLI and config reference page is generated from the code's help texts: it must be regenerated whenever a
flag or its help changes (docs/gen_reference.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generator():
    from helpers import docs_generator

    return docs_generator("gen_reference")


def test_the_committed_reference_page_is_current():
    import difflib

    committed = (ROOT / generator().OUT).read_text()
    diff = "".join(list(difflib.unified_diff(committed.splitlines(True), generator().generate().splitlines(True),
                                             "committed", "generated"))[:40])
    assert not diff, f"docs/reference/cli.md is stale: run python docs/gen_reference.py\n{diff}"


def test_every_flag_of_every_task_and_strategy_is_on_the_page_with_its_help():
    from peftkit.config import ARGUMENT_CLASSES
    from peftkit.strategies import REGISTRY as STRATEGIES
    from peftkit.tasks import REGISTRY as TASKS

    page = generator().generate()
    classes = [*ARGUMENT_CLASSES, *(TASKS.get(n).flag_class for n in TASKS.available()),
               *(STRATEGIES.get(n).flag_class for n in STRATEGIES.available())]
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.init:
                assert f"| `--{f.name}` |" in page, f.name
                words = " ".join(f.metadata.get("help", "").replace("%%", "%").split())[:40]
                assert words.replace("|", "\\|") in page, (f.name, words)
