"""Strategy registry: how a model is adapted. The contract (what a strategy writes) is
:class:`peftkit.strategies.base.Strategy`.

Variants are presets of one class (``register("qlora", LoRA, quantization="nf4")``). Third-party packages add
strategies through the entry-point group ``peftkit.strategies``; each entry point names a Strategy subclass,
registered under the entry point's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftkit.registry import Registry, Spec
from peftkit.strategies.base import Strategy

ENTRY_POINT_GROUP = "peftkit.strategies"
__all__ = ["Strategy", "available", "get_strategy", "register"]


@dataclass(frozen=True)
class StrategySpec(Spec):
    """A registered strategy: its class and the field values its name presets."""

    def build(self, **overrides: Any) -> Strategy:
        return self.cls(**{**self.preset, **overrides})


REGISTRY = Registry("strategy", ENTRY_POINT_GROUP, spec=StrategySpec, base=Strategy)


def register(name: str, cls: type | str, flags: type | None = None, **preset: Any) -> None:
    """Register strategy class ``cls`` (or ``"module:Class"``, imported on first use) under ``name``, with
    ``preset`` field values as its defaults; ``flags``: the dataclass of its flags, when not ``cls`` itself."""
    REGISTRY.register(name, cls, flags, **preset)


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name`` (built-in or plug-in)."""
    return REGISTRY.get(name)


def available() -> list[str]:
    return REGISTRY.available()


from peftkit.strategies.flags import FullFlags, HeadFlags, IA3Flags, LoRAFlags, NoFlags, PartialFlags  # noqa: E402

FREEZING, LORA = "peftkit.strategies.freezing", "peftkit.strategies.lora"
register("full", f"{FREEZING}:Full", FullFlags)
register("head", f"{FREEZING}:Head", HeadFlags)
register("partial", f"{FREEZING}:Partial", PartialFlags)
register("lora", f"{LORA}:LoRA", LoRAFlags)
register("qlora", f"{LORA}:LoRA", LoRAFlags, quantization="nf4")
register("dora", f"{LORA}:LoRA", LoRAFlags, use_dora=True)
register("rslora", f"{LORA}:LoRA", LoRAFlags, use_rslora=True)
register("loraplus", f"{LORA}:LoRAPlus", LoRAFlags, loraplus_lr_ratio=16.0)
register("pissa", f"{LORA}:LoRA", LoRAFlags, lora_init="pissa")
register("bitfit", f"{FREEZING}:BitFit", NoFlags)
register("ia3", "peftkit.strategies.ia3:IA3", IA3Flags)

_CLASSES = {"Full": FREEZING, "Head": FREEZING, "Partial": FREEZING, "BitFit": FREEZING, "LoRA": LORA,
            "LoRAPlus": LORA, "IA3": "peftkit.strategies.ia3"}


def __getattr__(name: str) -> Any:
    """``from peftkit.strategies import LoRA`` still works: the classes load on first use (PEP 562)."""
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
