"""--pooling: what a sequence classifier reads, resolved from a sentence-embedding model's own files."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import build, collate, examples
from torch.utils.data import DataLoader

from peftkit import pooling
from peftkit.errors import PeftkitError
from peftkit.feature_cache import INDEX_KEY, FeatureCache, backbone_weights_frozen


def sentence_transformers_files(path, **flags):
    (path / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **flags}))
    return path


def test_declared_pooling_is_read_from_sentence_transformers_files(tmp_path, builtin_model_dir):
    assert pooling.declared_pooling(builtin_model_dir) == "mean"  # all-MiniLM-L6-v2 as shipped
    assert pooling.declared_pooling(tmp_path) is None  # a plain transformers directory
    st = sentence_transformers_files(tmp_path / "cls", pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    assert pooling.declared_pooling(st) == "cls"
    both = sentence_transformers_files(tmp_path / "both", pooling_mode_cls_token=True, pooling_mode_mean_tokens=True)
    assert pooling.declared_pooling(both) is None  # concatenated poolings: not something one vector head reads


def test_auto_pools_as_declared_only_when_the_backbone_is_frozen(builtin_model_dir, tmp_path):
    assert pooling.resolve("auto", builtin_model_dir, backbone_weights_frozen=True)[0] == "mean"
    assert pooling.resolve("auto", builtin_model_dir, backbone_weights_frozen=False)[0] == "pooler"
    assert pooling.resolve("auto", tmp_path, backbone_weights_frozen=True)[0] == "pooler"
    assert pooling.resolve("cls", builtin_model_dir, backbone_weights_frozen=False)[0] == "cls"


def test_pool_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(pooling.pool(hidden, mask, "mean")[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(pooling.pool(hidden, mask, "max")[0], hidden[0, :3].amax(0))
    torch.testing.assert_close(pooling.pool(hidden, mask, "cls"), hidden[:, 0])


@pytest.mark.parametrize("mode", ["mean", "max", "cls"])
def test_the_classifier_reads_the_pooled_vector_and_padding_changes_nothing(mode, tiny_model_dir):
    model, task, _ = build("bert", "head", tiny_model_dir)
    task.pooling = mode
    task.prepare_model(model)
    task.prepare_model(model)  # idempotent: loading paths may call it again
    model.eval()
    rows = examples(6)
    batch = collate(rows)
    batch.pop(INDEX_KEY)
    with torch.no_grad():
        hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        expected = model.classifier(pooling.pool(hidden, batch["attention_mask"], mode))
        logits = model(**batch).logits
        alone = model(input_ids=torch.tensor([rows[0]["input_ids"]])).logits
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(alone[0], logits[0], rtol=1e-5, atol=1e-5)


def test_feature_cache_stays_exact_with_mean_pooling(tiny_model_dir):
    model, task, _ = build("bert", "head", tiny_model_dir)
    task.pooling = "mean"
    task.prepare_model(model)
    model.eval()
    data = examples()
    cache = FeatureCache(model)
    cache.build("train", DataLoader(data, batch_size=4, collate_fn=collate), torch.device("cpu"), show_progress=False)
    replay = collate(data[1:8])
    indices = replay.pop(INDEX_KEY)
    with torch.no_grad():
        expected = model(**replay).logits
        cache.attach()
        cache.select("train", indices)
        got = model(**replay).logits
        cache.detach()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert cache.stub.fields == {"pooler_output"}  # the pooled vector only, not every token's


def test_a_decoder_classifier_refuses_other_pooling(tiny_model_dir):
    model, task, _ = build("llama", "head", tiny_model_dir)
    task.pooling = "mean"
    with pytest.raises(PeftkitError, match="last token"):
        task.prepare_model(model)


def test_unknown_pooling_is_refused():
    from peftkit.tasks.text_cls import TextClassification

    with pytest.raises(PeftkitError, match="--pooling must be one of"):
        TextClassification(pooling="attention")


@pytest.mark.parametrize("name,declared", [("head", True), ("bitfit", True), ("lora", False), ("full", False),
                                           ("ia3", False), ("partial", False)])
def test_auto_reads_the_declared_pooling_only_where_no_backbone_weight_trains(name, declared, tiny_model_dir):
    model, _, _ = build("bert", name, tiny_model_dir)
    assert backbone_weights_frozen(model) == declared  # bitfit: biases only, which cannot adapt a pooler
