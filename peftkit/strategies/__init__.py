"""Strategy registry: how a model is adapted.

A strategy is a small dataclass (its fields become CLI flags) with two methods::

    load_kwargs(head_names) -> dict        # extra from_pretrained kwargs, e.g. a quantization config
    prepare(model, task, head_names) -> nn.Module   # freeze, or wrap with peft

and a ``default_learning_rate`` class attribute. Optional: an ``lr_reference_batch`` class attribute (the global
batch that rate was chosen at; a run of a task with ``lr_follows_batch``, a smaller derived batch and no
--learning_rate gets the rate x sqrt(batch / reference)), and these methods, used where present::

    lr_scales(model) -> {param name: factor}        # per-parameter learning rates (LoRA+, layer-wise decay)
    unfreeze_schedule(model) -> {param name: frac}  # when each parameter starts to train (gradual unfreezing)
    finalize_saved(output_dir)                      # rewrite what was saved (PiSSA: for the original base)

Variants are presets of one class
(``register("qlora", LoRA, quantization="nf4")``). Third-party packages add strategies through the
entry-point group ``peftkit.strategies``; each entry point names a strategy class, registered under the
entry point's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from peftkit.registry import Registry, Spec

ENTRY_POINT_GROUP = "peftkit.strategies"


class Strategy(Protocol):
    default_learning_rate: float

    def load_kwargs(self, head_names: list[str]) -> dict[str, Any]: ...

    def prepare(self, model: nn.Module, task: Any, head_names: list[str]) -> nn.Module: ...


@dataclass(frozen=True)
class StrategySpec(Spec):
    """A registered strategy: its class and the field values its name presets."""

    def build(self, **overrides: Any) -> Strategy:
        return self.cls(**{**self.preset, **overrides})


REGISTRY = Registry("strategy", ENTRY_POINT_GROUP, spec=StrategySpec)


def register(name: str, cls: type, **preset: Any) -> None:
    """Register strategy class ``cls`` under ``name``, with ``preset`` field values as its defaults."""
    REGISTRY.register(name, cls, **preset)


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name`` (built-in or plug-in)."""
    return REGISTRY.get(name)


def available() -> list[str]:
    return REGISTRY.available()


from peftkit.strategies.freezing import BitFit, Full, Head, Partial  # noqa: E402
from peftkit.strategies.ia3 import IA3  # noqa: E402
from peftkit.strategies.lora import LoRA, LoRAPlus  # noqa: E402

register("full", Full)
register("head", Head)
register("partial", Partial)
register("lora", LoRA)
register("qlora", LoRA, quantization="nf4")
register("dora", LoRA, use_dora=True)
register("rslora", LoRA, use_rslora=True)
register("loraplus", LoRAPlus, loraplus_lr_ratio=16.0)
register("pissa", LoRA, lora_init="pissa")
register("bitfit", BitFit)
register("ia3", IA3)
