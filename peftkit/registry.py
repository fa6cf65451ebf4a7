"""Registries of plug-ins (strategies, tasks): built-ins registered by name, third parties through an
entry-point group, variants as presets of one class."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from peftkit.errors import PeftkitError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """A registered plug-in: the class that does the work (``target``: the class, or ``"module:Class"``, imported on
    first use), the dataclass of its command-line flags (``flags``: the class itself unless given), and the field
    values its name presets. Built-ins name their classes and give light flags classes, so that parsing flags and
    ``--help`` import neither torch nor transformers' models."""

    name: str
    target: type | str
    preset: dict[str, Any] = field(default_factory=dict)
    flags: type | None = None
    base: type | None = None  # the contract the class must subclass (checked on registration, or on first import)

    @property
    def cls(self) -> type:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            _check_subclass(self.name, cls, self.base)
            return cls
        return self.target

    @property
    def flag_class(self) -> type:
        return self.flags or self.cls


def _check_subclass(name: str, cls: Any, base: type | None) -> None:
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{name!r}: {cls!r} is not a subclass of {base.__module__}.{base.__name__}, the contract "
                        "it must keep.")


class Registry:
    """Plug-ins of one kind. Entry points of ``group`` are read on first use; a broken one is reported and
    skipped, and none can replace a built-in."""

    def __init__(self, kind: str, group: str, spec: type[Spec] = Spec, base: type | None = None,
                 flags_base: type | None = None):
        """``base``: the contract every registered class subclasses; ``flags_base``: the one a separate flags class
        subclasses (tasks: TaskFlags, which carries the task's defaults)."""
        self.kind, self.group, self.spec, self.base, self.flags_base = kind, group, spec, base, flags_base
        self.specs: dict[str, Spec] = {}
        self.loaded = False

    def register(self, name: str, cls: type | str, flags: type | None = None, **preset: Any) -> None:
        """``cls``: the class, or ``"module:Class"`` (imported on first use; built-ins, whose modules load torch)."""
        if not isinstance(cls, str):
            _check_subclass(f"{self.kind} {name}", cls, self.base)
        if flags is not None:
            _check_subclass(f"{self.kind} {name}'s flags", flags, self.flags_base)
        self.specs[name] = self.spec(name, cls, preset, flags, self.base)

    def _load_entry_points(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self.specs:
                continue  # built-ins win; a plug-in cannot silently replace them
            try:
                self.register(ep.name, ep.load())
            except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break peftkit
                logger.warning("Could not load %s plug-in %r (%s): %s", self.kind, ep.name, ep.value, exc)

    def get(self, name: str) -> Spec:
        self._load_entry_points()
        if name not in self.specs:
            raise PeftkitError(f"Unknown {self.kind} {name!r}. Available: {', '.join(self.available())}.")
        return self.specs[name]

    def available(self) -> list[str]:
        self._load_entry_points()
        return sorted(self.specs)
