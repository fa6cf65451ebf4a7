"""--mixed_precision auto, and the warning for bf16 emulated on a CPU (measured about 20x slower than float32)."""

import logging

import pytest
import torch


def test_auto_mixed_precision_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    from peftkit import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: False)
    assert runner.resolve_mixed_precision("auto") == "no"
    monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: True)
    assert runner.resolve_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runner.resolve_mixed_precision("auto") == "fp16"
    assert runner.resolve_mixed_precision("bf16") == "bf16" and runner.resolve_mixed_precision(None) is None


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, tmp_path, caplog):
    from accelerate.state import AcceleratorState

    from peftkit import runner
    from peftkit.config import TrainingArguments

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: False)
    AcceleratorState._reset_state(True)
    try:
        with caplog.at_level(logging.WARNING, logger="peftkit.runner"):
            acc = runner.make_accelerator(TrainingArguments(mixed_precision="bf16", report_to="none"), tmp_path)
        assert acc.mixed_precision == "bf16"
        assert "bf16 on a CPU without bf16 instructions" in caplog.text
        caplog.clear()
        AcceleratorState._reset_state(True)
        acc = runner.make_accelerator(TrainingArguments(mixed_precision="auto", report_to="none"), tmp_path)
        assert acc.mixed_precision == "no" and "bf16 on a CPU" not in caplog.text
    finally:
        AcceleratorState._reset_state(True)
