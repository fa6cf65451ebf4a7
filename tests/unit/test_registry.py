"""Third-party strategies arrive through the `peftkit.strategies` entry-point group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

import peftkit.strategies as registry


@dataclass
class BiasOnly:
    """A toy plug-in: train only biases (BitFit)."""

    default_learning_rate: ClassVar[float] = 1e-3

    def load_kwargs(self, head_names):
        return {}

    def prepare(self, model, task, head_names):
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith("bias"))
        return model


class FakeEntryPoint:
    def __init__(self, name, obj):
        self.name, self.value, self._obj = name, f"plugin:{name}", obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_entry_point_strategy_is_available(fresh_registry, monkeypatch, caplog):
    eps = [FakeEntryPoint("bitfit", BiasOnly), FakeEntryPoint("broken", ImportError("no module x")),
           FakeEntryPoint("lora", BiasOnly)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "peftkit.strategies" else [])
    assert "bitfit" in registry.available()
    assert isinstance(registry.get_strategy("bitfit").build(), BiasOnly)
    assert registry.get_strategy("lora").cls.__name__ == "LoRA"  # a plug-in cannot replace a built-in
    assert "broken" not in registry.available() and "no module x" in caplog.text


def test_plugin_strategy_gets_its_flags_and_trains(fresh_registry, tiny_model_dir):
    from helpers import LABELS, batch

    from peftkit.cli import parse_train_args

    registry.register("bitfit", BiasOnly)
    *_, strategy = parse_train_args([], "bitfit")
    from types import SimpleNamespace

    from peftkit.config import DataArguments, ModelArguments
    from peftkit.modeling import count_parameters, load_model
    from peftkit.tasks.text_cls import TextClassification

    task = TextClassification(DataArguments())
    model, heads = load_model(task, strategy, ModelArguments(tiny_model_dir("bert")), LABELS,
                              SimpleNamespace(pad_token_id=0))
    model = strategy.prepare(model, task, heads)
    trainable, _ = count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    assert model(**batch()).loss.isfinite()
