"""The docs site's benchmark pages (docs/gen_benchmarks.py): committed pages match the committed results, a
figure on a page is the one in its results.json, and a moved results file keeps the date of its measurement."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    from helpers import docs_generator

    return docs_generator("gen_benchmarks")


def test_committed_pages_are_current(capsys):
    code = load_generator().main(["--check"])
    assert code == 0, "stale benchmark pages; run `python docs/gen_benchmarks.py`:\n" + capsys.readouterr().out


def test_a_table_cell_is_the_json_figure():
    results = json.loads((ROOT / "benchmarks/results/full_mode_2026-11-27/results.json").read_text())
    lora = [r["accuracy"] for r in results["runs"] if r["strategy"] == "lora" and r["status"] == "ok"]
    page = load_generator().generate(ROOT)[Path("docs/benchmarks/full_mode_2026-11-27.md")]
    row = next(line for line in page.splitlines() if line.startswith("| lora | "))
    assert row.split(" | ")[1] == f"{statistics.fmean(lora):.4f} +- {statistics.stdev(lora):.4f}"
    assert re.search(r"^- \*\*Commit:\*\* `[0-9a-f]{7}`", page, re.M)  # the header names the commit
    assert f"`{' '.join(results['command'])}`" in page


def git(repo: Path, *args: str, day: str = "2026-01-01") -> str:
    stamp = f"{day}T12:00:00+00:00"
    env = {**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp, "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout


def test_a_moved_results_file_keeps_its_date(tmp_path):
    gen = load_generator()
    git(tmp_path, "init", "-q")
    old = tmp_path / "benchmarks/results/results.json"
    old.parent.mkdir(parents=True)
    old.write_text('{"runs": []}\n')
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "measured", day="2026-11-25")
    first = git(tmp_path, "rev-parse", "HEAD").strip()
    (tmp_path / "benchmarks/results/default_2026-11-25").mkdir()
    git(tmp_path, "mv", "benchmarks/results/results.json", "benchmarks/results/default_2026-11-25/results.json")
    moved = Path("benchmarks/results/default_2026-11-25/results.json")
    assert gen.committed(tmp_path, [moved]) == {moved: ("2026-11-25", first[:7])}  # staged, not yet committed
    git(tmp_path, "commit", "-qm", "moved", day="2026-12-06")
    assert gen.committed(tmp_path, [moved]) == {moved: ("2026-11-25", first[:7])}
    (tmp_path / moved).write_text('{"runs": [], "notes": ["edited"]}\n')
    with pytest.raises(SystemExit, match="commit them first"):  # new content that records no date
        gen.committed(tmp_path, [moved])


def test_a_recorded_date_and_commit_need_no_git(tmp_path):
    part = Path("benchmarks/results/new/results.json")
    (tmp_path / part).parent.mkdir(parents=True)
    (tmp_path / part).write_text(json.dumps({"date": "2026-12-10", "commit": "abc1234def", "runs": []}))
    assert load_generator().provenance(tmp_path, [part]) == {
        part: {"date": "2026-12-10", "date_own": True, "commit": "abc1234", "commit_own": True}}
