"""Task registry: what is learned. The contract (what a task writes, and the hooks it may) is
:class:`peftkit.tasks.base.Task`; a task's training policy is its :class:`~peftkit.tasks.base.TaskDefaults`.

Tasks are registered by name like strategies, with presets for variants. Third-party packages add tasks through
the entry-point group ``peftkit.tasks``; each entry point names a Task subclass (a dataclass whose fields are its
flags), registered under the entry point's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from peftkit.registry import Registry, Spec
from peftkit.tasks.base import Task, TaskDefaults, TaskFlags

ENTRY_POINT_GROUP = "peftkit.tasks"
__all__ = ["Task", "TaskDefaults", "TaskFlags", "available", "build_from_config", "get_task", "register",
           "task_fields"]


@dataclass(frozen=True)
class TaskSpec(Spec):
    """A registered task: its class and the field values its name presets."""

    def build(self, data_args, **overrides: Any):
        """The task with its flags (preset, then ``overrides``) and the run's data arguments."""
        fields = {f.name for f in dataclasses.fields(self.cls)} if dataclasses.is_dataclass(self.cls) else set()
        task = self.cls(**{k: v for k, v in {**self.preset, **overrides}.items() if k in fields})
        task.data = data_args
        return task


REGISTRY = Registry("task", ENTRY_POINT_GROUP, spec=TaskSpec, base=Task, flags_base=TaskFlags)


def register(name: str, cls: type | str, flags: type | None = None, **preset: Any) -> None:
    """Register task class ``cls`` (or ``"module:Class"``, imported on first use) under ``name``, with ``preset``
    field values as its defaults; ``flags``: the dataclass of its flags, when not ``cls`` itself."""
    REGISTRY.register(name, cls, flags, **preset)


def get_task(name: str) -> TaskSpec:
    """The registered task ``name`` (built-in or plug-in)."""
    return REGISTRY.get(name)


def available() -> list[str]:
    return REGISTRY.available()


def task_fields(task) -> dict[str, Any]:
    """A task's flag values, as saved in the run's config."""
    return dataclasses.asdict(task) if dataclasses.is_dataclass(task) else {}


def build_from_config(cfg: dict[str, Any], data_args):
    """The task of a saved run, its label space restored."""
    task = get_task(cfg["task"]).build(data_args, **cfg.get("task_args", {}))
    state = cfg.get("task_state")
    if state is None:  # runs from before task_state was recorded (text_cls only)
        state = {"labels": cfg.get("labels"), "label_type": cfg.get("label_type", "str")}
    task.restore(state)
    return task


from peftkit.tasks.flags import (  # noqa: E402
    CausalLMFlags,
    ImageClsFlags,
    PreferenceFlags,
    TextClsFlags,
    TokenClsFlags,
)

register("text_cls", "peftkit.tasks.text_cls:TextClassification", TextClsFlags)
register("causal_lm", "peftkit.tasks.causal_lm:CausalLM", CausalLMFlags)
register("token_cls", "peftkit.tasks.token_cls:TokenClassification", TokenClsFlags)
register("image_cls", "peftkit.tasks.image_cls:ImageClassification", ImageClsFlags)
register("preference", "peftkit.tasks.preference:Preference", PreferenceFlags)

_CLASSES = {"TextClassification": "text_cls", "CausalLM": "causal_lm", "TokenClassification": "token_cls",
            "ImageClassification": "image_cls", "Preference": "preference"}


def __getattr__(name: str) -> Any:
    """``from peftkit.tasks import TextClassification`` still works: the classes load on first use (PEP 562)."""
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(f"peftkit.tasks.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
