"""The common matrix every strategy row runs through, on tiny BERT and Llama models built from configs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from helpers import LORA_R, batch, build, text_task

from peftkit.config import ModelArguments, TrainingArguments
from peftkit.engine import build_optimizer
from peftkit.modeling import count_parameters, head_module_names, load_model
from peftkit.strategies import available, get_strategy

H, FF, L, C, R = 64, 128, 2, 3, 4  # hidden, intermediate, layers, classes, lora rank (see conftest.TINY)

# Trainable parameter counts derived by hand from the tiny configs.
BERT_HEAD = H * C + C  # classifier (with bias)
BERT_LAYER = 4 * (H * H + H) + 2 * 2 * H + (H * FF + FF) + (FF * H + H)  # q,k,v,o + 2 LayerNorms + MLP
BERT_POOLER = H * H + H
LLAMA_HEAD = H * C  # score (no bias)
LLAMA_LAYER = 4 * H * H + 3 * H * FF + 2 * H  # q,k,v,o + gate,up,down + 2 RMSNorms
LORA_QV = L * 2 * (R * H + H * R)  # A and B on query and value in every layer
EXPECTED = {
    ("bert", "head"): BERT_HEAD,
    ("bert", "lora"): LORA_QV + BERT_HEAD,
    ("bert", "qlora"): LORA_QV + BERT_HEAD,
    ("bert", "partial"): BERT_LAYER + BERT_POOLER + BERT_HEAD,  # top 1 layer + pooler above it + head
    ("bert", "dora"): LORA_QV + L * 2 * H + BERT_HEAD,  # DoRA adds a magnitude vector per adapted module
    ("llama", "head"): LLAMA_HEAD,
    ("llama", "lora"): LORA_QV + LLAMA_HEAD,
    ("llama", "qlora"): LORA_QV + LLAMA_HEAD,
    ("llama", "dora"): LORA_QV + L * 2 * H + LLAMA_HEAD,
    ("llama", "partial"): LLAMA_LAYER + H + LLAMA_HEAD,  # top 1 layer + final norm + head
    ("bert", "rslora"): LORA_QV + BERT_HEAD,
    ("bert", "pissa"): LORA_QV + BERT_HEAD,
    ("llama", "pissa"): LORA_QV + LLAMA_HEAD,
    ("llama", "rslora"): LORA_QV + LLAMA_HEAD,
    ("bert", "loraplus"): LORA_QV + BERT_HEAD,
    ("llama", "loraplus"): LORA_QV + LLAMA_HEAD,
    # every bias: embeddings' LayerNorm, per layer q,k,v,o + 2 LayerNorms + MLP in and out, the pooler
    ("bert", "bitfit"): H + L * (4 * H + 2 * H + FF + H) + H + BERT_HEAD,
    # IA3: a scale per output channel of key and value, per input channel of both output.dense layers
    ("bert", "ia3"): L * (2 * H + H + FF) + BERT_HEAD,
    ("llama", "ia3"): L * (2 * H + FF) + LLAMA_HEAD,  # k_proj, v_proj, down_proj (input FF)
}
MATRIX = [(arch, s) for arch in ("bert", "llama")
          for s in ("full", "head", "partial", "lora", "qlora", "dora", "rslora", "loraplus", "pissa", "ia3")]
MATRIX += [("bert", "bitfit")]  # Llama has no biases: refused (below)


def test_builtin_strategies_are_registered():
    builtin = {"full", "head", "partial", "lora", "qlora", "dora", "rslora", "loraplus", "pissa", "bitfit", "ia3"}
    assert builtin <= set(available())


def test_loraplus_gives_the_b_matrices_a_higher_learning_rate(tiny_model_dir):
    from peftkit.engine import build_scheduler

    model, _, strategy = build("bert", "loraplus", tiny_model_dir)
    scales = strategy.lr_scales(model)
    assert scales and set(scales.values()) == {16.0} and all(".lora_B." in n for n in scales)
    assert len(scales) == L * 2  # query and value in every layer
    args = TrainingArguments(warmup_ratio=0.5)
    opt = build_optimizer(model, args, 1e-3, scales)
    build_scheduler(opt, args, total=10, steps_per_epoch=10)  # warm-up and decay keep the ratio
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert lrs[id(param)] == pytest.approx(lrs[id(next(iter(opt.param_groups[0]["params"])))]
                                                   * (16 if ".lora_B." in name else 1)), name
    assert get_strategy("lora").build().lr_scales(model) == {}


def test_rslora_scales_by_the_square_root_of_the_rank(tiny_model_dir):
    plain, rs = lora_on_tiny_bert(tiny_model_dir), lora_on_tiny_bert(tiny_model_dir, use_rslora=True)
    layer = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert plain.get_submodule(layer).scaling["default"] == 16 / R
    assert rs.get_submodule(layer).scaling["default"] == pytest.approx(16 / R ** 0.5)


def test_bitfit_refuses_a_model_without_biases(tiny_model_dir):
    from peftkit.errors import PeftkitError

    with pytest.raises(PeftkitError, match="no bias terms"):
        build("llama", "bitfit", tiny_model_dir)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_head_is_found_generically(arch, tiny_model_dir):
    model, _, _ = build(arch, "full", tiny_model_dir)
    assert head_module_names(model) == (["classifier"] if arch == "bert" else ["score"])


@pytest.mark.parametrize("arch,name", MATRIX)
def test_exact_trainable_counts(arch, name, tiny_model_dir):
    model, _, _ = build(arch, name, tiny_model_dir)
    trainable, total = count_parameters(model)
    if name == "full":
        assert trainable == total
    else:
        assert trainable == EXPECTED[(arch, name)]


@pytest.mark.parametrize("arch,name", MATRIX)
def test_only_trainable_tensors_change(arch, name, tiny_model_dir):
    model, _, _ = build(arch, name, tiny_model_dir)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = build_optimizer(model, TrainingArguments(weight_decay=0.0), lr=1e-2)
    for step in range(2):  # two steps: LoRA's B starts at zero, so A first gets a gradient on step two
        out = model(**batch(step, model))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"


@pytest.mark.parametrize("arch,name", MATRIX)
def test_save_reload_gives_identical_logits(arch, name, tiny_model_dir, tmp_path):
    model, task, strategy = build(arch, name, tiny_model_dir)
    opt = build_optimizer(model, TrainingArguments(), lr=1e-2)
    model(**batch(0, model)).loss.backward()
    opt.step()
    model.eval()
    inputs = {k: v for k, v in batch(1, model).items() if k != "labels"}
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    strategy.finalize_saved(tmp_path)  # as the runner does
    if (tmp_path / "adapter_config.json").exists():
        from peft import PeftModel

        base, _ = load_model(task, strategy, ModelArguments(tiny_model_dir(arch)),
                              SimpleNamespace(pad_token_id=0))  # a fresh, differently initialised head
        reloaded = PeftModel.from_pretrained(base, tmp_path)
    else:
        reloaded = task.auto_class.from_pretrained(tmp_path)
    assert list((tmp_path).glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
    reloaded.eval()
    # PiSSA's saved adapter is a conversion for the original base, equal to the trained weights to float32
    # rounding (see the test below); the tiny random model amplifies that rounding to ~2e-4 in its logits.
    tolerance = 1e-3 if name == "pissa" else 1e-6
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=tolerance)


def test_qlora_quantizes_base_but_not_head(tiny_model_dir):
    model, _, _ = build("bert", "qlora", tiny_model_dir)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    head = model.base_model.model.classifier
    assert type(head.modules_to_save["default"]).__name__ == "Linear"


def test_qlora_still_trains_every_adapter_after_an_evaluation(tiny_model_dir):
    """bitsandbytes repacks 4-bit weights for a CPU inference kernel without a backward pass at the first eval-mode
    forward without gradients; a training run must keep passing gradients through the quantized layers."""
    model, _, _ = build("llama", "qlora", tiny_model_dir)
    inputs = batch(model=model)
    model.eval()
    with torch.no_grad():
        model(**inputs)
    model.train()
    model(**inputs).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), [
        n for n, g in grads.items() if g is None or not g.abs().sum()]


def test_partial_rejects_more_layers_than_the_model_has(tiny_model_dir):
    from peftkit.errors import PeftkitError

    with pytest.raises(PeftkitError, match="exceeds the model's 2 layers"):
        build_partial = get_strategy("partial").build(num_trainable_layers=5)
        task = text_task()
        model, heads = load_model(task, build_partial, ModelArguments(tiny_model_dir("bert")),
                              SimpleNamespace(pad_token_id=0))
        build_partial.prepare(model, task, heads)


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("name", ["full", "lora"])
def test_disable_dropout_makes_training_mode_forward_deterministic(arch, name, tiny_model_dir):
    from peftkit.modeling import disable_dropout

    model, _, _ = build(arch, name, tiny_model_dir)
    for module in model.modules():  # the tiny configs may ship with zero dropout: force it on to test
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
        for attr, value in list(vars(module).items()):
            if "dropout" in attr and isinstance(value, float):
                setattr(module, attr, 0.5)
    model.train()
    b = batch()
    assert not torch.equal(model(**b).logits, model(**b).logits)
    assert disable_dropout(model) > 0
    assert torch.equal(model(**b).logits, model(**b).logits)


def lora_on_tiny_bert(tiny_model_dir, **lora_args):
    from peftkit.strategies.lora import LoRA

    task, strategy = text_task(), LoRA(lora_r=R, **lora_args)
    model, heads = load_model(task, strategy, ModelArguments(tiny_model_dir("bert")),
                              SimpleNamespace(pad_token_id=0))
    return strategy.prepare(model, task, heads)


def adapted(model) -> set[str]:
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}


def test_all_linear_is_peft_shorthand_not_a_module_name(tiny_model_dir):
    from peftkit.errors import PeftkitError

    assert adapted(lora_on_tiny_bert(tiny_model_dir)) == {"query", "value"}  # peft's default for BERT
    model = lora_on_tiny_bert(tiny_model_dir, lora_target_modules=["all-linear"])
    assert adapted(model) == {"query", "key", "value", "dense"}  # attention, MLP and pooler projections
    assert not any("classifier" in n and "lora" in n for n, _ in model.named_parameters())  # the head trains whole
    with pytest.raises(PeftkitError) as info:
        lora_on_tiny_bert(tiny_model_dir, lora_target_modules=["no_such_layer"])
    message = str(info.value)
    assert ".." not in message and "or all-linear" in message and "classifier" not in message.split("e.g.")[1]


@pytest.mark.parametrize("name", ["full", "partial"])
def test_layerwise_lr_decay_slows_each_layer_below_the_top(name, tiny_model_dir):
    from peftkit.strategies.freezing import Full, Partial

    model, _, _ = build("bert", name, tiny_model_dir)
    strategy = (Full if name == "full" else Partial)(layerwise_lr_decay=0.5)
    scales = strategy.lr_scales(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(scales) == trainable
    assert scales["classifier.weight"] == scales["bert.pooler.dense.weight"] == 1.0  # above the layers
    assert scales["bert.encoder.layer.1.attention.self.query.weight"] == 0.5  # the top layer (of 2)
    if name == "full":
        assert scales["bert.encoder.layer.0.output.dense.bias"] == 0.25
        assert scales["bert.embeddings.word_embeddings.weight"] == 0.125  # below the bottom layer
    else:
        assert "bert.encoder.layer.0.output.dense.bias" not in scales  # frozen: no learning rate at all
    assert Full().lr_scales(model) == {}  # off by default: the optimizer is unchanged


@pytest.mark.parametrize("name", ["full", "partial"])
def test_gradual_unfreezing_schedules_layers_from_the_top(name, tiny_model_dir):
    from peftkit.strategies.freezing import Full, Partial

    model, _, _ = build("bert", name, tiny_model_dir)
    strategy = (Full if name == "full" else Partial)(gradual_unfreezing=True)
    joins = strategy.unfreeze_schedule(model)
    assert set(joins) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert joins["classifier.weight"] == joins["bert.pooler.dense.weight"] == 0.0  # from the start
    if name == "full":  # 2 layers and the embeddings below them: 1/6, 2/6, then half-way
        assert joins["bert.encoder.layer.1.attention.self.query.weight"] == pytest.approx(1 / 6)
        assert joins["bert.encoder.layer.0.output.dense.bias"] == pytest.approx(2 / 6)
        assert joins["bert.embeddings.word_embeddings.weight"] == 0.5
    else:  # the one trainable layer is the deepest group
        assert joins["bert.encoder.layer.1.attention.self.query.weight"] == 0.5
    assert Full().unfreeze_schedule(model) == {}  # off by default


def test_pissa_starts_from_the_same_function_and_saves_an_adapter_for_the_original_base(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    model, _, strategy = build("bert", "pissa", tiny_model_dir)
    plain, _, _ = build("bert", "lora", tiny_model_dir)  # same seed: same base and head
    original = dict(plain.named_parameters())
    adapted = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(adapted) == 4  # query and value of 2 layers
    for name, module in adapted:
        base = original[name + ".base_layer.weight"]
        assert not torch.allclose(module.base_layer.weight, base)  # the principal part moved into the adapter
        torch.testing.assert_close(module.get_delta_weight("default") + module.base_layer.weight, base, rtol=0,
                                   atol=1e-6)
    opt = build_optimizer(model, TrainingArguments(), lr=1e-2)
    model(**batch()).loss.backward()
    opt.step()
    model.save_pretrained(tmp_path)
    strategy.finalize_saved(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (2 * LORA_R, 2 * 16, True)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    for name, module in adapted:  # original base + saved adapter = the trained weights
        a, b = saved[f"{name}.lora_A.weight"], saved[f"{name}.lora_B.weight"]
        trained = module.base_layer.weight + module.get_delta_weight("default")
        torch.testing.assert_close(original[name + ".base_layer.weight"] + scale * b @ a,
                                   trained, rtol=0, atol=1e-6)
