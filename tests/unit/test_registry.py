"""Third-party strategies and tasks arrive through the `peftkit.strategies` / `peftkit.tasks` entry-point groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

import peftkit.strategies as registry
from peftkit.strategies import Strategy


@dataclass
class BiasOnly(Strategy):
    """A toy plug-in: train only biases (BitFit)."""

    default_learning_rate: ClassVar[float] = 1e-3

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


def fresh(monkeypatch, module):
    """``module``'s registry as it is now, with its entry points read again, restored after the test."""
    monkeypatch.setattr(module.REGISTRY, "specs", dict(module.REGISTRY.specs))
    monkeypatch.setattr(module.REGISTRY, "loaded", False)


@pytest.fixture
def fresh_registry(monkeypatch):
    fresh(monkeypatch, registry)


def test_plugin_strategy_gets_its_flags_and_trains(fresh_registry, tiny_model_dir):
    from helpers import batch, text_task

    from peftkit.cli import parse_train_args

    registry.register("biasonly", BiasOnly)
    strategy = parse_train_args([], "biasonly")[3]
    from types import SimpleNamespace

    from peftkit.config import ModelArguments
    from peftkit.modeling import count_parameters, load_model

    task = text_task()
    model, heads = load_model(task, strategy, ModelArguments(tiny_model_dir("bert")),
                              SimpleNamespace(pad_token_id=0))
    model = strategy.prepare(model, task, heads)
    trainable, _ = count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    assert model(**batch()).loss.isfinite()


@dataclass
class Scaled(BiasOnly):
    """A plug-in with a derived field and a __post_init__ that must run once."""

    scale: float = 2.0
    effective: float = field(init=False, default=0.0)

    def __post_init__(self):
        self.scale *= 10  # not idempotent: building the class twice would give 200
        self.effective = self.scale


def test_a_plugin_without_a_flags_class_is_built_once(fresh_registry):
    from peftkit.cli import parse_train_args

    registry.register("scaled", Scaled)
    strategy = parse_train_args(["--scale", "2"], "scaled")[3]
    assert type(strategy) is Scaled and (strategy.scale, strategy.effective) == (20.0, 20.0)


def test_the_built_in_classes_still_import_from_their_packages():
    from peftkit.strategies import LoRA
    from peftkit.strategies.lora import LoRA as Direct
    from peftkit.tasks import TextClassification
    from peftkit.tasks.text_cls import TextClassification as DirectTask

    assert LoRA is Direct and TextClassification is DirectTask
    with pytest.raises(AttributeError):
        registry.NoSuchStrategy  # noqa: B018


# -- tasks ------------------------------------------------------------------------------------------------------
import peftkit.tasks as task_registry  # noqa: E402
from peftkit.tasks.text_cls import TextClassification  # noqa: E402


@dataclass
class KeywordTask(TextClassification):
    """A toy third-party task: text classification whose texts get a prefix (its own flag). It subclasses the
    built-in task, as a plug-in author would, and overrides what it needs."""

    keyword_prefix: str = field(default="review: ", metadata={"help": "keyword: prefix added to every text."})
    name: ClassVar[str] = "keyword"
    default_metric: ClassVar[str] = "f1"

    def preprocess(self, raw, tokenizer):
        from datasets import DatasetDict

        column = self.data.text_column
        raw = DatasetDict({split: ds.map(lambda b: {column: [self.keyword_prefix + t for t in b[column]]},
                                         batched=True) for split, ds in raw.items()})
        return super().preprocess(raw, tokenizer)


def test_a_plugin_must_subclass_the_contract(fresh_registry, fresh_tasks):
    @dataclass
    class Loose:
        default_learning_rate: ClassVar[float] = 1e-3

    for module, kind in ((registry, "strategy"), (task_registry, "task")):
        with pytest.raises(TypeError, match=f"{kind} loose.*not a subclass of .*, the contract it must keep"):
            module.register("loose", Loose)
    # named by its module path (imported on first use): refused when it is first imported
    task_registry.register("late", "test_registry:BiasOnly")
    with pytest.raises(TypeError, match="'late'.*not a subclass of peftkit.tasks.base.Task"):
        task_registry.get_task("late").cls  # noqa: B018
    with pytest.raises(TypeError, match="flags.*not a subclass of peftkit.tasks.base.TaskFlags"):
        task_registry.register("bare_flags", KeywordTask, flags=Loose)


def test_a_task_must_set_its_class_attributes():
    from peftkit.tasks import Task

    written = {m: (lambda self, *args: None) for m in Task.__abstractmethods__}
    with pytest.raises(TypeError, match=r"must set the class attribute\(s\) name, auto_class"):
        type("Nameless", (Task,), {**written, "metrics": {"loss": "min"}, "default_metric": "loss"})
    with pytest.raises(TypeError, match="default_metric 'bleu' is not one of its metrics"):
        @dataclass
        class Unscored(TextClassification):
            default_metric: ClassVar[str] = "bleu"


def test_a_strategy_must_set_its_learning_rate():
    with pytest.raises(TypeError, match="must set default_learning_rate"):
        class NoRate(Strategy):
            def prepare(self, model, task, head_names):
                return model


@pytest.fixture
def fresh_tasks(monkeypatch):
    fresh(monkeypatch, task_registry)


@pytest.mark.parametrize("kind", ["strategy", "task"])
def test_entry_point_plugins_load_broken_ones_are_skipped_builtins_win(kind, monkeypatch, caplog):
    module, plugin, builtin, builtin_cls = ((registry, BiasOnly, "lora", "LoRA") if kind == "strategy" else
                                            (task_registry, KeywordTask, "causal_lm", "CausalLM"))
    fresh(monkeypatch, module)
    eps = [FakeEntryPoint("plugin", plugin), FakeEntryPoint("broken", ImportError("no module x")),
           FakeEntryPoint(builtin, plugin)]
    monkeypatch.setattr("peftkit.registry.entry_points", lambda group: eps if group == module.ENTRY_POINT_GROUP else [])
    assert "plugin" in module.available() and module.REGISTRY.get("plugin").cls is plugin
    assert module.REGISTRY.get(builtin).cls.__name__ == builtin_cls  # a plug-in cannot replace a built-in
    assert "broken" not in module.available() and "no module x" in caplog.text
    if kind == "strategy":
        assert isinstance(registry.get_strategy("plugin").build(), BiasOnly)
    else:
        assert task_registry.get_task("plugin").build(None, keyword_prefix="x: ").keyword_prefix == "x: "


def test_a_plugin_task_gets_its_flags_and_trains_through_the_engine(fresh_tasks, tmp_path, builtin_model_dir,
                                                                      capsys):
    import json

    from peftkit.cli import main

    task_registry.register("keyword", KeywordTask)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(40)))
    code = main(["train", "--task", "keyword", "--strategy", "lora", "--keyword_prefix", "note: ",
                 "--model_name_or_path", builtin_model_dir, "--train_file", str(data), "--max_steps", "2",
                 "--output_dir", str(tmp_path / "run"),
                 "--report_to", "none", "--per_device_train_batch_size", "8"])
    assert code == 0, capsys.readouterr().err[-2000:]
    cfg = json.loads((tmp_path / "run" / "peftkit_config.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # its own flag and the one it inherits
    assert cfg["task"] == "keyword" and cfg["task_args"] == {"pooling": "auto", "keyword_prefix": "note: "}
    assert results["metric_for_best_model"] == "f1" and set(results["eval"]) >= {"accuracy", "f1"}
