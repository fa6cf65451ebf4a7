"""Class weights, focal loss and label smoothing: their arithmetic, and how the engine uses them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftkit.config import TrainingArguments
from peftkit.errors import PeftkitError
from peftkit.losses import Loss, balanced_weights, build_loss, parse_class_weights


def logits_labels(seed=0, n=12, classes=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[3] = -100  # an unsupervised row
    return torch.randn(n, classes, generator=g), labels


def test_plain_settings_keep_the_models_own_loss():
    from helpers import text_task

    assert build_loss(TrainingArguments(), text_task(), {"labels": [0, 1]}) is None


def test_without_options_the_loss_is_cross_entropy_over_supervised_rows():
    logits, labels = logits_labels()
    torch.testing.assert_close(Loss()(logits, labels), F.cross_entropy(logits, labels, ignore_index=-100))


def test_label_smoothing_is_torchs():
    logits, labels = logits_labels()
    keep = labels != -100
    torch.testing.assert_close(Loss(label_smoothing=0.1)(logits, labels),
                               F.cross_entropy(logits[keep], labels[keep], label_smoothing=0.1))


def test_focal_loss_down_weights_easy_examples():
    logits, labels = logits_labels()
    keep = labels != -100
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    p = torch.softmax(logits[keep], -1).gather(1, labels[keep, None]).squeeze(1)
    torch.testing.assert_close(Loss(focal_gamma=2.0)(logits, labels), ((1 - p) ** 2 * ce).mean())
    torch.testing.assert_close(Loss(focal_gamma=0.0)(logits, labels), ce.mean())
    easy = torch.tensor([[8.0, 0.0]]), torch.tensor([0])
    hard = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    assert Loss(focal_gamma=2.0)(*easy) / Loss()(*easy) < 1e-5 < Loss(focal_gamma=2.0)(*hard) / Loss()(*hard)


def test_class_weights_scale_each_rows_loss_and_keep_the_per_example_mean():
    logits, labels = logits_labels()
    keep = labels != -100
    weight = torch.tensor([1.0, 4.0, 0.5])
    ce = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    # A mean over examples (not torch's sum-of-weights normalisation), so that the engine's weighting of
    # micro-batches by their number of examples stays exact.
    torch.testing.assert_close(Loss(weight=weight)(logits, labels), (ce * weight[labels[keep]]).mean())


def test_balanced_weights_are_sklearns():
    weights = balanced_weights(torch.tensor([90, 10, 0]))
    torch.testing.assert_close(weights, torch.tensor([100 / (3 * 90), 100 / (3 * 10), 0.0]))


@pytest.mark.parametrize("spec,expected", [("none", None), ("balanced", "balanced"), ("1,4", [1.0, 4.0]),
                                           ("2 0.5", [2.0, 0.5])])
def test_class_weight_flags(spec, expected):
    assert parse_class_weights(spec) == expected


@pytest.mark.parametrize("spec", ["heavy", "1,-2", "0,1", "nan,1"])
def test_bad_class_weights_are_refused(spec):
    with pytest.raises(PeftkitError, match="--class_weights must be"):
        parse_class_weights(spec)


def test_class_weights_must_match_the_classes_and_the_task():
    from helpers import text_task

    from peftkit.tasks.causal_lm import CausalLM

    task = text_task(["a", "b", "c"])
    loss = build_loss(TrainingArguments(class_weights="balanced"), task, {"labels": [0, 0, 0, 1]})
    torch.testing.assert_close(loss.weight, torch.tensor([4 / 9, 4 / 3, 0.0]))
    with pytest.raises(PeftkitError, match="2 value.*3 classes"):
        build_loss(TrainingArguments(class_weights="1,2"), task, {"labels": [0, 1, 2]})
    with pytest.raises(PeftkitError, match="classification tasks"):
        build_loss(TrainingArguments(class_weights="balanced"), CausalLM(), None)
    assert build_loss(TrainingArguments(label_smoothing=0.1), CausalLM(), None).label_smoothing == 0.1


def test_a_weighted_loss_under_accumulation_is_the_large_batch_update(tiny_model_dir, tmp_path):
    from test_engine import engine

    common = dict(max_steps=2, warmup_ratio=0.0, optimizer="sgd", momentum=0.0, class_weights="1,3,0.5",
                  loss="focal", label_smoothing=0.05)
    torch.manual_seed(0)
    big = engine(tiny_model_dir, tmp_path / "a", per_device_train_batch_size=8, **common)
    big.fit(None)
    torch.manual_seed(0)
    small = engine(tiny_model_dir, tmp_path / "b", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                   **common)
    small.fit(None)
    assert big.loss_fn is not None
    for (name, a), b in zip(big.prepared.named_parameters(), small.prepared.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
