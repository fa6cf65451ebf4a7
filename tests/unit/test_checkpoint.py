"""Checkpoints on a tiny model: complete or absent, rotated, exact to resume from, refused when damaged."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
import torch
from accelerate import Accelerator
from helpers import build, collate
from test_engine import data

from peftkit import checkpoint
from peftkit.config import TrainingArguments
from peftkit.engine import Engine
from peftkit.errors import PeftkitError


def engine(tiny_model_dir, out, **overrides):
    """A tiny BERT with LoRA, dropout left ON: resuming must restore the random state too."""
    model, task, _ = build("bert", "lora", tiny_model_dir)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    args = TrainingArguments(output_dir=str(out), report_to="none", per_device_train_batch_size=4,
                             **({"num_train_epochs": 3, "save_steps": 3, "eval_steps": 2} | overrides))
    return Engine(Accelerator(), task, model, data(), collate, args, lr=1e-2, output_dir=out, use_feature_cache=False)


class Crash(Exception):
    pass


def crash_after(eng, step):
    real = eng._after_step

    def after_step(loss):
        real(loss)
        if eng.state.step == step:
            raise Crash

    eng._after_step = after_step


def trainable(eng):
    return {n: p.detach().clone() for n, p in eng.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("crash_step", [4, 7, 10])  # inside an epoch, right at an epoch's end, in the last epoch
def test_resuming_after_a_crash_gives_the_uninterrupted_run_bit_for_bit(tiny_model_dir, tmp_path, crash_step):
    straight = engine(tiny_model_dir, tmp_path / "a")
    expected = straight.fit()
    broken = engine(tiny_model_dir, tmp_path / "b")
    crash_after(broken, crash_step)
    with pytest.raises(Crash):
        broken.fit()
    latest = checkpoint.resolve(tmp_path / "b", "latest")
    assert int(latest.name.split("-")[1]) <= crash_step
    resumed = engine(tiny_model_dir, tmp_path / "b")
    got = resumed.fit(latest)
    assert got.resumed_from_step == int(latest.name.split("-")[1])
    assert got.history == expected.history and got.train_history == expected.train_history
    assert got.eval == expected.eval and got.global_step == expected.global_step == 12
    for name, value in trainable(straight).items():
        assert torch.equal(trainable(resumed)[name], value), name


def test_checkpoints_hold_the_training_state_and_only_the_newest_are_kept(tiny_model_dir, tmp_path):
    engine(tiny_model_dir, tmp_path, save_total_limit=2, max_steps=10).fit()
    kept = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["checkpoint-8", "checkpoint-9"]  # every 3 steps and at epoch ends (4, 8)
    files = sorted(p.name for p in kept[-1].iterdir())
    assert files == sorted([checkpoint.WEIGHTS, checkpoint.OPTIMIZER, checkpoint.SCHEDULER, checkpoint.RNG,
                            checkpoint.STATE, checkpoint.BEST])
    state = json.loads((kept[-1] / checkpoint.STATE).read_text())
    assert state["step"] == 9 and state["epoch"] == 2 and state["batches_in_epoch"] == 1
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_save_steps_minus_one_writes_no_checkpoint(tiny_model_dir, tmp_path):
    engine(tiny_model_dir, tmp_path, save_steps=-1).fit()
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_latest_skips_directories_that_are_not_complete(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / checkpoint.STATE).write_text("{}")
    (tmp_path / "checkpoint-7").mkdir()  # no trainer_state.json: not a checkpoint
    (tmp_path / ".checkpoint-9.tmp").mkdir()  # a write that was killed half-way
    assert checkpoint.resolve(tmp_path, "latest").name == "checkpoint-3"
    with pytest.raises(PeftkitError, match="is not a complete checkpoint"):
        checkpoint.resolve(tmp_path, str(tmp_path / "checkpoint-7"))


def test_a_full_disk_stops_cleanly_and_keeps_the_earlier_checkpoints(tiny_model_dir, tmp_path, monkeypatch):
    real = checkpoint.save_file

    def filling_disk(tensors, path, *args, **kwargs):
        # The first checkpoint goes through; the disk is full while the second one is written.
        if ".checkpoint-" in str(path) and checkpoint.list_checkpoints(tmp_path):
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", filling_disk)
    eng = engine(tiny_model_dir, tmp_path)
    with pytest.raises(PeftkitError, match=r"Could not write the checkpoint of step \d+ .*No space left on device"
                       r".*earlier checkpoints are intact \(checkpoint-3\).*--resume_from_checkpoint latest"):
        eng.fit()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["checkpoint-3"]
    assert not list(tmp_path.glob(".checkpoint-*"))
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoint-3", rank=0)["state"]["step"] == 3


@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_optimizer", "missing_rng"])
def test_a_damaged_checkpoint_is_refused_with_the_alternatives(tiny_model_dir, tmp_path, damage):
    engine(tiny_model_dir, tmp_path, save_total_limit=0).fit()
    latest = checkpoint.resolve(tmp_path, "latest")
    if damage == "truncate_weights":
        path = latest / checkpoint.WEIGHTS
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage_optimizer":
        (latest / checkpoint.OPTIMIZER).write_bytes(os.urandom(300))
    else:
        (latest / checkpoint.RNG).unlink()
    named = {"truncate_weights": checkpoint.WEIGHTS, "garbage_optimizer": checkpoint.OPTIMIZER,
             "missing_rng": checkpoint.RNG}[damage]
    with pytest.raises(PeftkitError, match=rf"{latest.name}' is damaged: {re.escape(named)} differ from what was "
                       r"written \(sha256\).*available: checkpoint-3"):
        engine(tiny_model_dir, tmp_path).fit(latest)
    assert len(checkpoint.list_checkpoints(tmp_path)) == 6  # 3, 4, 6, 8, 9, 12: nothing deleted
    # `latest` takes the newest checkpoint that verifies, and says which it passed over
    assert checkpoint.resolve(tmp_path, "latest").name == "checkpoint-9"


def test_finite_tampering_is_caught_before_loading_and_a_checkpoint_resaved_is_replaced_whole(tiny_model_dir,
                                                                                             tmp_path):
    """64 bytes overwritten inside the tensor data: resume loaded it and hit NaN, blaming the learning rate."""
    engine(tiny_model_dir, tmp_path, save_total_limit=0, max_steps=6).fit()
    latest = checkpoint.resolve(tmp_path, "latest")
    path = latest / checkpoint.WEIGHTS
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little") + 8
    data[start:start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert checkpoint.damaged_files(latest) == [checkpoint.WEIGHTS]
    assert checkpoint.resolve(tmp_path, "latest").name != latest.name


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_files_are_never_unpickled(tiny_model_dir, tmp_path, monkeypatch):
    engine(tiny_model_dir, tmp_path, max_steps=3).fit()
    latest = checkpoint.resolve(tmp_path, "latest")
    torch.save({"state": Boom()}, latest / checkpoint.OPTIMIZER)  # a booby-trapped file
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PeftkitError, match="is damaged: optimizer.pt"):  # its digest no longer matches
        checkpoint.load(latest, rank=0)
    # with the digest forged too, torch.load(weights_only=True) still refuses to run it
    state = json.loads((latest / checkpoint.STATE).read_text())
    state["files"][checkpoint.OPTIMIZER] = checkpoint.sha256_of(latest / checkpoint.OPTIMIZER)
    (latest / checkpoint.STATE).write_text(json.dumps(state))
    with pytest.raises(PeftkitError, match="corrupt or truncated"):
        checkpoint.load(latest, rank=0)
    assert not (tmp_path / "pwned").exists()


def full_disk_error(kind):
    """A full disk as each writer reports it."""
    if kind == "torch.save":
        return RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                            "data/0: file write failed")
    if kind == "safetensors":
        from safetensors import SafetensorError

        return SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("kind", ["torch.save", "safetensors", "oserror"])
def test_a_full_disk_is_one_message_however_the_writer_reports_it(tiny_model_dir, tmp_path, monkeypatch, kind):
    real_save = torch.save

    def failing(obj, path, *args, **kwargs):
        if checkpoint.list_checkpoints(tmp_path):  # the first checkpoint goes through
            raise full_disk_error(kind)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", failing)
    with pytest.raises(PeftkitError, match=r"Could not write the checkpoint of step \d+ in .*GiB free there\)\. "
                       r"Nothing was half-written and earlier checkpoints are intact \(checkpoint-3\)"):
        engine(tiny_model_dir, tmp_path).fit()
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoint-3", rank=0)["state"]["step"] == 3


def test_a_full_disk_while_keeping_the_best_weights_keeps_the_previous_ones(tiny_model_dir, tmp_path, monkeypatch):
    from peftkit import train_state

    real = train_state.save_file
    calls = {"n": 0}

    def failing(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise full_disk_error("safetensors")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(train_state, "save_file", failing)
    with pytest.raises(PeftkitError, match=r"Could not write the best evaluation's weights in .*The previous best "
                       "weights are intact"):
        engine(tiny_model_dir, tmp_path, save_steps=-1).fit()
    assert (tmp_path / checkpoint.BEST_FILE).is_file() and not list(tmp_path.glob("*.tmp"))


def test_an_atomic_text_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    from peftkit import layout

    path = tmp_path / "results.json"
    path.write_text('{"old": true}')
    monkeypatch.setattr(layout.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        layout.atomic_write_text(path, '{"new": true}')
    assert path.read_text() == '{"old": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
