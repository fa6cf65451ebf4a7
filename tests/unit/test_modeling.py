"""The dtype a model is loaded and trained in: full precision unless the user asks for less."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from helpers import text_task

from peftkit.config import ModelArguments
from peftkit.errors import PeftkitError
from peftkit.modeling import check_trainable_dtype, load_model
from peftkit.strategies import get_strategy


@pytest.fixture(scope="module")
def half_checkpoint(tiny_model_dir, tmp_path_factory):
    """The tiny BERT saved in float16, as many Hub checkpoints are (bfloat16 for most language models)."""
    from transformers import AutoModel

    path = tmp_path_factory.mktemp("half")
    AutoModel.from_pretrained(tiny_model_dir("bert")).half().save_pretrained(path)
    return str(path)


def dtypes(model, trainable_only=False):
    return {p.dtype for p in model.parameters() if p.requires_grad or not trainable_only}


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_a_half_precision_checkpoint_trains_in_float32_by_default(half_checkpoint, strategy):
    s = get_strategy(strategy).build()
    model, heads = load_model(text_task(), s, ModelArguments(half_checkpoint), SimpleNamespace(pad_token_id=0))
    assert dtypes(model) == {torch.float32}
    check_trainable_dtype(s.prepare(model, text_task(), heads), "fp16", "float32")  # nothing to refuse


def test_auto_keeps_the_checkpoints_dtype(half_checkpoint, caplog):
    s = get_strategy("full").build()
    model, heads = load_model(text_task(), s, ModelArguments(half_checkpoint, torch_dtype="auto"),
                              SimpleNamespace(pad_token_id=0))
    assert torch.float16 in dtypes(model)
    model = s.prepare(model, text_task(), heads)
    with pytest.raises(PeftkitError, match="fp16 mixed precision cannot train float16 weights"):
        check_trainable_dtype(model, "fp16", "auto")
    with caplog.at_level(logging.WARNING, logger="peftkit.modeling"):
        check_trainable_dtype(model, "bf16", "auto")
    assert "stored in float16 (--torch_dtype auto)" in caplog.text


def test_bfloat16_base_with_lora_warns_only_about_what_trains_in_half(half_checkpoint, caplog):
    s = get_strategy("lora").build()
    model, heads = load_model(text_task(), s, ModelArguments(half_checkpoint, torch_dtype="bfloat16"),
                              SimpleNamespace(pad_token_id=0))
    assert dtypes(model) == {torch.bfloat16}
    model = s.prepare(model, text_task(), heads)
    lora = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora == {torch.float32}  # peft keeps the adapters in float32 over a half-precision base
    with caplog.at_level(logging.WARNING, logger="peftkit.modeling"):
        check_trainable_dtype(model, "bf16", "bfloat16")
    half_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and p.dtype == torch.bfloat16)
    assert half_trainable > 0 and f"{half_trainable:,} trainable weights are stored in bfloat16" in caplog.text


def test_an_unknown_dtype_is_refused():
    with pytest.raises(PeftkitError, match="--torch_dtype must be one of float32, bfloat16, float16, auto"):
        ModelArguments(torch_dtype="float64")


@pytest.mark.parametrize("name", ["./models/my-bert", "/data/models/bert", "runs/2026/bert", "~/no-such-model"])
def test_a_missing_local_path_is_named_as_a_path_not_blamed_on_the_hub(tmp_path, monkeypatch, name):
    from peftkit.modeling import load_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PeftkitError) as info:
        load_config(ModelArguments(name))
    assert "no such directory" in str(info.value) and "Hub" not in str(info.value)


def test_a_hub_name_still_says_the_hub_is_out_of_reach(tmp_path, monkeypatch):
    from peftkit.modeling import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PeftkitError, match="the Hub is out of reach"):
        load_config(ModelArguments("someone/some-model"))
