"""--mixed_precision auto, and the warnings for bf16 on a CPU (measured slower than float32: about 20x emulated,
1.5-2.2x with avx512_bf16 and no AMX)."""

import logging

import pytest
import torch


def test_auto_mixed_precision_keeps_float32_on_a_cpu_and_picks_a_half_type_on_a_gpu(monkeypatch):
    from peftkit import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for instructions in (None, "avx512_bf16", "amx"):
        monkeypatch.setattr(devices, "cpu_bf16_instructions", lambda i=instructions: i)
        assert devices.resolve_mixed_precision("auto") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.resolve_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.resolve_mixed_precision("auto") == "fp16"
    assert devices.resolve_mixed_precision("bf16") == "bf16" and devices.resolve_mixed_precision(None) is None


@pytest.mark.parametrize(("instructions", "warning"), [
    (None, "bf16 on a CPU without bf16 instructions"),
    ("avx512_bf16", "bf16 on a CPU with avx512_bf16 but no AMX"),
    ("amx", None),
])
def test_bf16_on_a_cpu_warns_where_it_was_measured_slower(monkeypatch, tmp_path, caplog, instructions, warning):
    from accelerate.state import AcceleratorState

    from peftkit import devices
    from peftkit.config import TrainingArguments

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    monkeypatch.setattr(devices, "cpu_bf16_instructions", lambda: instructions)
    AcceleratorState._reset_state(True)
    try:
        with caplog.at_level(logging.WARNING, logger="peftkit.devices"):
            acc = devices.make_accelerator(TrainingArguments(mixed_precision="bf16", report_to="none"), tmp_path)
        assert acc.mixed_precision == "bf16"
        if warning:
            assert warning in caplog.text
        else:
            assert "bf16 on a CPU" not in caplog.text
        caplog.clear()
        AcceleratorState._reset_state(True)
        acc = devices.make_accelerator(TrainingArguments(mixed_precision="auto", report_to="none"), tmp_path)
        assert acc.mixed_precision == "no" and "bf16 on a CPU" not in caplog.text
    finally:
        AcceleratorState._reset_state(True)


def test_cpu_bf16_instructions_reads_this_cpu():
    from peftkit.devices import cpu_bf16_instructions

    assert cpu_bf16_instructions() in (None, "avx512_bf16", "amx")
    if torch.cpu._is_amx_tile_supported():
        assert cpu_bf16_instructions() == "amx"
