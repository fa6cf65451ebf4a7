"""The planner: its meta-device pass against the same step run for real, weights by dtype and quantization, an
8B shape planned without its weights, sizes as users write them, and the time model's arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from peftkit import planner, preflight
from peftkit.config import DataArguments, ModelArguments
from peftkit.errors import PeftkitError
from peftkit.modeling import load_model
from peftkit.strategies import get_strategy
from peftkit.tasks import get_task
from peftkit.units import parse_size

LM = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, use_cache=False)


def lm_task():
    return get_task("causal_lm").build(DataArguments())


def lm_batch(length, device="cpu"):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, length), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.mark.parametrize("name", ["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_meta_pass_follows_the_same_tensors_as_a_real_step(name, checkpointing):
    """Every tensor the meta pass counts is one the real step allocates: the same peak, byte for byte, and the
    same split into activations, gradients, optimizer state and temporaries (with checkpointing, up to when the
    cyclic garbage collector frees the recomputed tensors)."""
    task, config = lm_task(), LlamaConfig(**LM)
    setup = planner.Setup(micro_batch=2, length=32, gradient_checkpointing=checkpointing)
    plan = planner.plan(task, get_strategy(name).build(), name, config, setup, torch.float32)

    torch.manual_seed(0)
    strategy = get_strategy(name).build()
    model = task.auto_class.from_config(config)
    if checkpointing:
        from peftkit.modeling import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    model = strategy.prepare(model, task, [])
    with planner._fused_sdpa():  # the kernel a CPU takes at this size; the planner assumes it everywhere
        real = planner.simulate(model, lm_batch(32), setup)
    assert real["peak"] > 0
    assert plan.flops_per_step == real["flops"]
    at_peak = real["at_peak"]
    if checkpointing:
        # checkpointing frees its recomputed tensors through reference cycles, at whatever moment Python's
        # collector runs, in the real step as in the planned one: the same peak to within part of a layer's
        # recomputation, reached at a moment that can differ
        planned = plan.activations + plan.temporaries + plan.gradients + plan.optimizer
        assert planned == pytest.approx(sum(at_peak.values()), rel=0.25)
    else:
        assert plan.activations == at_peak.get("activations", 0)
        assert plan.temporaries == at_peak.get("temporaries", 0)
        assert plan.gradients == at_peak.get("gradients", 0)
        assert plan.optimizer == at_peak.get("optimizer", 0)
    if name == "full":  # AdamW keeps two float32 states per weight
        assert plan.optimizer >= 2 * 4 * sum(p.numel() for p in model.parameters())


def test_checkpointing_and_lora_plan_less_than_full():
    task, config = lm_task(), LlamaConfig(**LM | {"num_hidden_layers": 4})

    def peak(name, ckpt):
        setup = planner.Setup(micro_batch=4, length=128, gradient_checkpointing=ckpt)
        return planner.plan(task, get_strategy(name).build(), name, config, setup, torch.float32)

    full, lora, lora_ckpt = peak("full", False), peak("lora", False), peak("lora", True)
    assert lora.optimizer < full.optimizer / 10 and lora.gradients < full.optimizer / 10
    assert lora_ckpt.activations < lora.activations / 2
    assert lora.trainable < full.trainable and lora.frozen == full.trainable  # adapters on the whole base


def test_quantized_weights_are_counted_at_their_stored_bits():
    """QLoRA: every linear layer of the base in NF4 with its scales; embeddings, norms and the output layer in
    their dtype; int8 at a byte per weight and a float32 scale per row."""
    task, config = lm_task(), LlamaConfig(**LM)
    setup = planner.Setup(micro_batch=1, length=16)
    lora = planner.plan(task, get_strategy("lora").build(), "lora", config, setup, torch.float32)
    qlora = planner.plan(task, get_strategy("qlora").build(), "qlora", config, setup, torch.float32)
    h, ff, layers, vocab = 64, 128, 2, 512
    kv = h // 4 * 2  # two key/value heads of 16
    linear = layers * (h * h * 2 + h * kv * 2 + 3 * h * ff)
    bits = 4 + 8 / 64 + 32 / (64 * 256)  # NF4 with double quantization (the default)
    assert qlora.weights_by_kind[f"{bits:.3g}-bit"] == pytest.approx(linear * bits / 8, rel=1e-3)
    unquantized = sum(v for k, v in qlora.weights_by_kind.items() if k == "float32")
    lora_adapters = lora.weights - lora.weights_only
    assert unquantized == pytest.approx(4 * (2 * vocab * h + (2 * layers + 1) * h) + lora_adapters, rel=1e-3)
    int8 = planner.plan(task, get_strategy("qlora").build(quantization="int8"), "qlora", config, setup,
                        torch.float32)
    assert sum(v for k, v in int8.weights_by_kind.items() if k.endswith("-bit")) > qlora.weights_by_kind[
        f"{bits:.3g}-bit"]


def test_an_8b_shape_is_planned_without_its_weights(tmp_path):
    """Llama 3.1 8B from its config.json alone, in a fresh process: the plan counts 16 GB of bfloat16 weights
    while the process's peak grows by less than 1 GiB over what the libraries took."""
    from peftkit import catalogue

    directory = catalogue.write("llama-3.1-8b", tmp_path / "llama8b")
    code = f"""
import json, resource, torch
from peftkit import planner, preflight
from peftkit.config import DataArguments, ModelArguments
from peftkit.strategies import get_strategy
from peftkit.tasks import get_task
from peftkit.memory import resident_bytes
task = get_task("causal_lm").build(DataArguments())
# a first plan of a tiny shape loads every library planning uses (peft, bitsandbytes, the model classes): what
# the 8B plan adds beyond that is its own
from transformers import LlamaConfig
tiny = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
for name in ("lora", "qlora"):
    planner.plan(task, get_strategy(name).build(), name, tiny, planner.Setup(1, 64, gradient_checkpointing=True),
                 torch.bfloat16)
before = max(resident_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
args = ModelArguments(model_name_or_path={str(directory)!r}, torch_dtype="bfloat16")
out = {{}}
for name in ("lora", "qlora"):
    setup = planner.Setup(micro_batch=1, length=512, gradient_checkpointing=True)
    out[name] = preflight.plan_candidate(task, name, get_strategy(name).build(), args, setup).as_dict()
out["growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps(out, default=str))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    lora, qlora = out["lora"], out["qlora"]
    assert lora["trainable"] + lora["frozen"] == pytest.approx(8.03e9 + lora["trainable"], rel=0.005)
    assert lora["weights"] == pytest.approx(2 * 8.03e9, rel=0.01)
    assert qlora["weights"] < 0.45 * lora["weights"]  # 4-bit linears; embeddings and output layer stay bf16
    assert out["growth"] < 2**30, f"planning allocated {out['growth'] / 2**30:.1f} GiB"


@pytest.mark.parametrize("text,value", [("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("16000MiB", 16000 * 2**20),
                                        ("1.5 TiB", int(1.5 * 2**40)), ("24G", 24 * 2**30), ("1024", 1024)])
def test_sizes_as_users_write_them(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1GiB", "24XB", "GiB"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(PeftkitError, match="24GiB"):
        parse_size(text)


def test_step_time_fit_and_length_interpolation():
    fixed, rate = planner.fit_step_time([(1e12, 1.5), (2e12, 2.5)])
    assert fixed == pytest.approx(0.5) and rate == pytest.approx(1e12)
    assert planner.step_seconds(4e12, (fixed, rate)) == pytest.approx(4.5)
    points = [(100, 1e9 * 100 + 1e6 * 100**2), (200, 1e9 * 200 + 1e6 * 200**2), (400, 1e9 * 400 + 1e6 * 400**2)]
    assert preflight._interpolate(points, 300) == pytest.approx(1e9 * 300 + 1e6 * 300**2)


def test_run_time_follows_the_data_lengths():
    setup = planner.Setup(micro_batch=2, length=100)
    flops = {25: 25.0, 50: 50.0, 100: 100.0}  # linear: one FLOP per token
    data = {"num_train": 4, "lengths": [100, 100, 10, 10], "epochs": 2.0, "max_steps": -1}
    out = preflight.run_time(data, setup, flops, (1.0, 1.0))  # 1 s per step, 1 FLOP per second
    assert out["run_steps"] == 4
    assert out["run_seconds"] == pytest.approx(2 * (100 + 10 + 2 * 1.0))


def test_a_model_without_the_tasks_class_is_refused_by_name(tiny_vit_dir):
    task = lm_task()
    args = ModelArguments(model_name_or_path=tiny_vit_dir)
    with pytest.raises(PeftkitError, match="'vit' has no causal-LM head class"):
        preflight.plan_candidate(task, "lora", get_strategy("lora").build(), args, planner.Setup(1, 8))


def test_random_init_builds_the_shapes_with_the_architectures_initialisation(tmp_path):
    config = LlamaConfig(**LM)
    config.save_pretrained(tmp_path)
    task = lm_task()
    torch.manual_seed(0)
    model, _ = load_model(task, get_strategy("lora").build(), ModelArguments(str(tmp_path), random_init=True),
                          SimpleNamespace(pad_token_id=0))
    weights = model.model.layers[0].mlp.up_proj.weight
    assert weights.shape == (128, 64) and weights.std().item() == pytest.approx(config.initializer_range, rel=0.2)
    assert math.isfinite(model(**lm_batch(8)).loss.item())


@pytest.mark.parametrize("name,expected", [
    ("fsdp_lora.yaml", {"processes": 2, "sharding": "fsdp", "mixed_precision": "bf16", "device": "cuda"}),
    ("deepspeed_zero3.yaml", {"processes": 2, "sharding": "zero3", "mixed_precision": "bf16", "device": "cuda"}),
    ("deepspeed_zero2.yaml", {"processes": 2, "sharding": "zero2", "mixed_precision": "bf16", "device": "cuda"}),
    ("multi_gpu.yaml", {"processes": 2, "sharding": "ddp", "mixed_precision": "bf16", "device": "cuda"}),
])
def test_the_shipped_accelerate_configs_are_read_for_the_plan(name, expected):
    from helpers import ROOT

    assert preflight.accelerate_config(str(ROOT / "recipes" / "accelerate" / name)) == expected


def test_sharding_divides_what_it_shards():
    task, config = lm_task(), LlamaConfig(**LM)
    one = planner.plan(task, get_strategy("full").build(), "full", config, planner.Setup(2, 32), torch.float32)
    four = planner.plan(task, get_strategy("full").build(), "full", config,
                        planner.Setup(2, 32, processes=4, sharding="zero3"), torch.float32)
    ddp = planner.plan(task, get_strategy("full").build(), "full", config,
                       planner.Setup(2, 32, processes=4, sharding="ddp"), torch.float32)
    assert four.weights == one.weights // 4 and four.optimizer == one.optimizer // 4
    assert ddp.weights == one.weights and ddp.temporaries == one.temporaries + 4 * one.trainable  # buckets
