"""The README's set-up and launcher lines, run as a user runs them (issue 32: the launcher's own noise, the CPU
install)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent  # this environment's `accelerate`, as an activated venv finds it
SMALL = ["--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2", "--report_to", "none"]
pytestmark = pytest.mark.e2e


def documented(prefix: str, containing: str = "") -> str:
    """The first README line that starts with ``prefix`` (and holds ``containing``)."""
    lines = [line.strip() for line in README.splitlines() if line.strip().startswith(prefix) and containing in line]
    assert lines, f"README has no line starting with {prefix!r}"
    return lines[0]


def launch(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    argv = [str(BIN / "accelerate") if a == "accelerate" else a for a in argv]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)


@pytest.fixture
def bad_jsonl(tmp_path) -> str:
    path = tmp_path / "chats.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b" "label": "y"}\n')
    return str(path)


def test_the_documented_quiet_launch_trains_without_the_launchers_notes(tmp_path):
    line = documented("accelerate launch -q --config_file")
    proc = launch([*shlex.split(line), *SMALL, "--output_dir", str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and "were not passed" not in proc.stderr


def test_a_mistake_under_the_documented_launch_is_peftkits_one_line(tmp_path, bad_jsonl):
    line = documented("accelerate launch -q --config_file")
    proc = launch([*shlex.split(line), "--train_file", bad_jsonl, "--output_dir", str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 1  # the launcher's status, as the README says
    assert proc.stderr.count("peftkit: error: Could not read") == 1, proc.stderr
    for noise in ("Traceback", "CalledProcessError", "were not passed"):
        assert noise not in proc.stderr, proc.stderr


def test_the_documented_default_config_quietens_a_plain_launch(tmp_path, bad_jsonl):
    home = {"HOME": str(tmp_path / "home"), "HF_HOME": "", "XDG_CACHE_HOME": ""}
    copy = documented("mkdir -p ~/.cache/huggingface/accelerate")
    env = {k: v for k, v in {**os.environ, **home}.items() if v}
    subprocess.run(["bash", "-c", copy], cwd=ROOT, env=env, check=True)
    argv = ["accelerate", "launch", "recipes/lora_text_cls.py", "--train_file", bad_jsonl, "--output_dir",
            str(tmp_path / "run")]
    proc = launch(argv, tmp_path, HOME=home["HOME"])
    plain = launch(argv, tmp_path, HOME=str(tmp_path / "fresh"))  # a machine with no Accelerate config
    assert "peftkit: error: Could not read" in proc.stderr and "were not passed" not in proc.stderr, proc.stderr
    assert "were not passed" in plain.stderr  # what the config removes


def test_the_cpu_install_line_is_kept_by_the_two_commands():
    from packaging.specifiers import SpecifierSet

    cpu = shlex.split(documented("pip install torch==", "--index-url"))
    first, second = [shlex.split(documented("pip install torch==", extra)) for extra in ("[vision]", "[test]")]
    assert cpu[cpu.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    pins = {a.split("==")[0]: a.split("==")[1] for a in cpu if "==" in a}
    for command in (first, second):
        for arg in [a for a in command if a.split("==")[0] in pins]:
            name, version = arg.split("==")
            assert version == pins[name] and SpecifierSet(f"=={version}").contains(f"{version}+cpu")
    assert documented("pip install torch==", "[test]") in (ROOT / ".ci/run").read_text()  # CI runs it as written
