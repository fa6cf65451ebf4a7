"""(IA)^3 through peft: learned vectors that rescale keys, values and the feed-forward input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from peftkit.errors import PeftkitError
from peftkit.strategies.base import Strategy
from peftkit.strategies.flags import IA3Flags


@dataclass
class IA3(IA3Flags, Strategy):
    """Infused adapters (Liu et al. 2022): one learned scale per channel of the adapted layers; the new head
    trains fully and is saved with them. Far fewer weights than LoRA, and merges into the base exactly."""

    default_learning_rate: ClassVar[float] = 1e-2

    def prepare(self, model: nn.Module, task: Any, head_names: list[str]) -> nn.Module:
        from peft import IA3Config, get_peft_model

        config = IA3Config(task_type=task.peft_task_type, target_modules=self.ia3_target_modules,
                           feedforward_modules=self.ia3_feedforward_modules, modules_to_save=head_names or None)
        try:
            return get_peft_model(model, config)
        except ValueError as exc:
            raise PeftkitError(f"IA3 could not be applied: {str(exc).rstrip('. ')}. Pass --ia3_target_modules and "
                               "--ia3_feedforward_modules with names of linear layers in this model.") from exc
