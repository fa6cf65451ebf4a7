"""The shipped Accelerate config files: each parses as Accelerate reads it, and (on a machine with 2+ GPUs)
trains, saves a whole adapter and reloads it to the metrics it was trained to."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {  # file -> (distributed_type, recipe used on GPUs)
    "default_config.yaml": ("NO", "lora_text_cls.py"),
    "cpu_2proc.yaml": ("MULTI_GPU", "lora_text_cls.py"),
    "multi_gpu.yaml": ("MULTI_GPU", "lora_text_cls.py"),
    "fsdp_lora.yaml": ("FSDP", "lora_text_cls.py"),
    "fsdp_qlora.yaml": ("FSDP", "qlora_text_cls.py"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "lora_text_cls.py"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", "lora_text_cls.py"),
    "multi_node.yaml": ("MULTI_GPU", "lora_text_cls.py"),
}


def test_every_config_file_is_listed_here():
    assert sorted(p.name for p in (ROOT / "recipes/accelerate").glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_parses_as_accelerate_reads_it_and_says_how_to_launch(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "recipes/accelerate" / name
    config = load_config_from_file(str(path))  # a dataclass: unknown or misspelt keys raise
    assert config.distributed_type.value == CONFIGS[name][0]
    assert f"--config_file recipes/accelerate/{name}" in path.read_text()
    if name == "multi_node.yaml":
        assert config.num_machines > 1 and config.main_process_ip and config.main_process_port


GPU_RUNS = [n for n in CONFIGS if n not in ("cpu_2proc.yaml", "multi_node.yaml", "default_config.yaml")]


@pytest.mark.gpu
@pytest.mark.e2e
@pytest.mark.parametrize("name", GPU_RUNS)
def test_config_trains_on_two_gpus_and_saves_a_whole_adapter(name, tmp_path, capsys):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install deepspeed)")
    recipe = CONFIGS[name][1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"recipes/accelerate/{name}",
           "--num_processes", "2", f"recipes/{recipe}", "--max_train_samples", "256", "--max_eval_samples", "51",
           "--max_steps", "8", "--per_device_train_batch_size", "8", "--report_to", "none",
           "--output_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_processes"] == 2 and results["effective_batch_size"] == 16
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in adapter) and all(t.numel() > 0 for t in adapter.values())
    assert max(t.abs().max() for k, t in adapter.items() if "lora_B" in k) > 0  # trained, not the zero init
    # The gathered adapter, reloaded by one process, gives the metrics the sharded run reported.
    from peftkit.cli import main

    assert main(["eval", str(tmp_path), "--split", "validation", "--max_eval_samples", "51"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["accuracy"] == pytest.approx(results["eval"]["accuracy"], abs=0.03)  # bf16 vs fp32 eval
