"""Head training on cached features must see exactly what the frozen backbone would produce."""

from __future__ import annotations

import pytest
import torch
from helpers import build, collate, examples
from torch.utils.data import DataLoader

from peftkit.feature_cache import INDEX_KEY, FeatureCache, backbone_is_frozen


@pytest.mark.parametrize("arch,left_pad", [("bert", False), ("llama", False), ("llama", True)])
def test_cached_backbone_reproduces_the_frozen_forward(arch, left_pad, tiny_model_dir):
    model, _, _ = build(arch, "head", tiny_model_dir)
    assert backbone_is_frozen(model)
    model.eval()
    data = examples()
    cache = FeatureCache(model)
    # Cache with one batch size, replay with another: padding widths differ between the two.
    cache.build("train", DataLoader(data, batch_size=4, collate_fn=lambda r: collate(r, left_pad)),
                torch.device("cpu"), show_progress=False)
    replay = collate(data[2:9], left_pad)
    indices = replay.pop(INDEX_KEY)
    with torch.no_grad():
        expected = model(**replay)
        cache.attach()
        cache.select("train", indices)
        got = model(**replay)
        cache.detach()
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)


def test_cache_is_not_used_when_the_backbone_trains(tiny_model_dir):
    model, _, _ = build("bert", "partial", tiny_model_dir)
    assert not backbone_is_frozen(model)


@pytest.mark.parametrize("arch,stored", [("bert", {"pooler_output"}), ("llama", {"last_hidden_state"})])
def test_only_the_outputs_the_head_reads_are_stored(arch, stored, tiny_model_dir):
    model, _, _ = build(arch, "head", tiny_model_dir)
    cache = FeatureCache(model)
    cache.build("train", DataLoader(examples(4), batch_size=4, collate_fn=collate), torch.device("cpu"),
                show_progress=False)
    assert cache.stub.fields == stored
    assert set(cache.stub.store["train"][0]) == stored
