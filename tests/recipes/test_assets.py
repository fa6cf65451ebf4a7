"""Built-in assets that arrive through PyPI: the causal LM is made once from a checksummed GGUF."""

from __future__ import annotations

import json
import os

import pytest
import torch

from peftkit import assets

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield assets.builtin_lm_path(), assets.cache_dir() / assets.SMOLLM2["filename"]


def test_the_builtin_lm_is_a_plain_transformers_directory_with_the_gguf_weights(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = lm_dir
    assert assets.sha256_of(gguf) == assets.SMOLLM2["sha256"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.rstrip().endswith("<|im_start|>assistant")  # SmolLM2's chat template came along
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference(**ids).logits)  # the same weights, bit for bit
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_the_converted_copy_is_reused_only_while_intact(lm_dir):
    path, _ = lm_dir
    marker = (path / assets.MARKER).stat().st_mtime_ns
    assert assets.builtin_lm_path() == path and (path / assets.MARKER).stat().st_mtime_ns == marker
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    try:
        weights.write_bytes(data[: len(data) // 2])  # a cut-short copy is never used
        assert not assets._intact(path, assets.SMOLLM2)
    finally:
        weights.write_bytes(data)
    assert assets._intact(path, assets.SMOLLM2)


def test_an_unchanged_copy_is_not_hashed_again(lm_dir, monkeypatch):
    path, _ = lm_dir
    assert assets._intact(path, assets.SMOLLM2)  # checked (hashed) once, if a test before changed a file
    hashed = []
    monkeypatch.setattr(assets, "sha256_of", lambda p: hashed.append(p) or "")
    assert assets.builtin_lm_path() == path and assets.builtin_lm_path() == path and not hashed
    weights = path / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: checked again (and fails here)
    assert not assets._intact(path, assets.SMOLLM2) and hashed
    monkeypatch.undo()
    assert assets._intact(path, assets.SMOLLM2)  # the real digests still match: the new times are remembered


def test_a_read_only_cache_is_still_intact(tmp_path, monkeypatch):
    """A cache the user cannot write (baked into an image, another user's): the check cannot be remembered, and
    the copy is used all the same."""
    (tmp_path / "w.bin").write_bytes(b"weights")
    asset = {"sha256": "source"}
    (tmp_path / assets.MARKER).write_text(json.dumps({"source_sha256": "source",
                                                      "files": {"w.bin": assets.sha256_of(tmp_path / "w.bin")}}))

    def read_only(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(assets.os, "replace", read_only)
    assert assets._intact(tmp_path, asset)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["w.bin", assets.MARKER])  # no temporary left
