"""Activation checkpointing (--gradient_checkpointing) with every strategy: the same loss and the same gradients
as without it, on tiny BERT and Llama models (LoRA behind frozen embeddings, QLoRA's 4-bit base, DoRA, IA3...)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import STRATEGY_ARGS, batch, text_task

from peftkit.config import ModelArguments
from peftkit.modeling import disable_dropout, enable_activation_checkpointing, load_model
from peftkit.strategies import get_strategy

STRATEGIES = ("full", "head", "partial", "lora", "qlora", "dora", "rslora", "loraplus", "pissa", "ia3")
MATRIX = [(arch, s) for arch in ("bert", "llama") for s in STRATEGIES] + [("bert", "bitfit")]


def step(arch, name, tiny_model_dir, checkpointing: bool):
    """Loss and gradients of one training step, built as the runner builds it: checkpointing is turned on
    before the strategy wraps the model."""
    path = tiny_model_dir(arch)
    torch.manual_seed(0)
    task = text_task()
    strategy = get_strategy(name).build(**STRATEGY_ARGS.get(name, {}))
    model, heads = load_model(task, strategy, ModelArguments(path), SimpleNamespace(pad_token_id=0))
    if checkpointing:
        enable_activation_checkpointing(model)
    model = strategy.prepare(model, task, heads)
    disable_dropout(model)
    model.train()
    loss = model(**batch(0, model)).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, model


@pytest.mark.parametrize("arch,name", MATRIX)
def test_checkpointing_gives_the_same_loss_and_gradients(arch, name, tiny_model_dir):
    loss, grads, _ = step(arch, name, tiny_model_dir, checkpointing=False)
    loss_ckpt, grads_ckpt, model = step(arch, name, tiny_model_dir, checkpointing=True)
    if name != "head":  # the head alone trains: nothing below it is recomputed, and nothing need be
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()), "not turned on"
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-6)
    assert grads_ckpt.keys() == grads.keys() and grads
    missing = [n for n, g in grads_ckpt.items() if g is None]
    assert not missing
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-5, atol=1e-6, msg=n)
    # every trainable tensor gets a gradient through the recomputation (LoRA's A only once B has left zero)
    assert all(bool(g.abs().sum() > 0) for n, g in grads_ckpt.items() if "lora_A" not in n), \
        [n for n, g in grads_ckpt.items() if not g.abs().sum() > 0]
