"""LoRA through peft, optionally on a bitsandbytes-quantized base (QLoRA) or as DoRA: one class, presets."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from peftkit.errors import PeftkitError, check
from peftkit.strategies.base import Strategy
from peftkit.strategies.flags import LoRAFlags

QUANTIZATIONS = ("nf4", "fp4", "int8")
# Adapter initialisations: peft's names. pissa and olora start the adapter on the weights' principal
# directions (SVD; QR) and take them out of the frozen base, which they rewrite.
LORA_INITS = ("default", "gaussian", "pissa", "olora")
REWRITES_BASE = re.compile(r"^(pissa(_niter_\d+)?|olora)$")


def fsdp_enabled() -> bool:
    """True inside `accelerate launch` with an FSDP config (set before the model is loaded)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


@dataclass
class LoRA(LoRAFlags, Strategy):
    """Low-rank adapters on the attention projections; the new head trains fully and is saved with them."""

    default_learning_rate: ClassVar[float] = 2e-3
    # ... chosen at a global batch of 32 (the built-in reviews and NER data); in a task that asks for it
    # (token_cls), a smaller batch derived for small data takes it x sqrt(batch / 32) unless --learning_rate is
    # passed (defaults.derive_learning_rate).
    lr_reference_batch: ClassVar[int] = 32

    def __post_init__(self) -> None:
        check(self.lora_r > 0, f"--lora_r must be a positive integer, got {self.lora_r}.")
        check(self.lora_alpha > 0, f"--lora_alpha must be positive, got {self.lora_alpha}.")
        check(0 <= self.lora_dropout < 1, f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        check(self.loraplus_lr_ratio >= 0, f"--loraplus_lr_ratio must be >= 0, got {self.loraplus_lr_ratio}.")
        check(self.lora_init in LORA_INITS or bool(REWRITES_BASE.match(self.lora_init)),
              f"--lora_init must be one of {', '.join(LORA_INITS)} or pissa_niter_N, got {self.lora_init!r}.")
        if self.rewrites_base:
            check(self.quantization is None and not self.use_dora,
                  f"--lora_init {self.lora_init} rewrites the base weights from their decomposition: not with a "
                  "quantized base (qlora) or DoRA here. Use --strategy lora (or pissa), or --lora_init default.")
        self._initial_adapter: dict[str, torch.Tensor] | None = None
        check(self.quantization in (None, *QUANTIZATIONS),
              f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}.")
        check(self.bnb_4bit_compute_dtype in ("auto", "float32", "bfloat16", "float16"),
              f"--bnb_4bit_compute_dtype must be auto, float32, bfloat16 or float16, got "
              f"{self.bnb_4bit_compute_dtype!r}.")

    @property
    def rewrites_base(self) -> bool:
        return bool(REWRITES_BASE.match(self.lora_init))

    def compute_dtype(self) -> torch.dtype:
        if self.bnb_4bit_compute_dtype == "auto":
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if cuda_bf16 else torch.float32
        return getattr(torch, self.bnb_4bit_compute_dtype)

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """LoRA+: the B matrices learn ``loraplus_lr_ratio`` times faster than A (Hayou et al. 2024)."""
        if not self.loraplus_lr_ratio:
            return {}
        return {name: self.loraplus_lr_ratio for name, param in model.named_parameters()
                if param.requires_grad and ".lora_B." in name}

    def load_kwargs(self, head_names: list[str]) -> dict[str, Any]:
        if self.quantization is None:
            return {}
        from transformers import BitsAndBytesConfig

        if self.quantization == "int8":
            check(not fsdp_enabled(), "FSDP cannot shard 8-bit bitsandbytes weights; use --quantization nf4 "
                  "(FSDP-QLoRA) or a DDP / DeepSpeed config.")
            config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=head_names or None)
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quantization,
                bnb_4bit_use_double_quant=self.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=self.compute_dtype(),
                # FSDP shards only float tensors: store the packed 4-bit data in the float dtype of the
                # rest of the model (bitsandbytes reads it byte-wise whatever the storage type).
                bnb_4bit_quant_storage=self.compute_dtype() if fsdp_enabled() else torch.uint8,
                # The freshly initialised head must stay in full precision: it trains, and 4-bit would
                # both break its forward and round away its updates.
                # With no new head (an LM), None lets transformers keep the output layer unquantized.
                llm_int8_skip_modules=head_names or None,
            )
        kwargs: dict[str, Any] = {"quantization_config": config}
        if fsdp_enabled():  # FSDP places and shards the weights itself; one dtype across each shard group
            kwargs["dtype"] = self.compute_dtype()
        elif torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().device}  # each rank quantizes onto its own GPU
        return kwargs

    def peft_config(self, task: Any, head_names: list[str], model: nn.Module | None = None):
        from peft import LoraConfig

        targets = self.lora_target_modules
        if targets is not None and len(targets) == 1 and targets[0].lower() == "all-linear":
            targets = "all-linear"  # peft's shorthand is a string; as a one-element list it names a module
        if targets is None and model is not None:
            targets = task.lora_targets(model, head_names)  # e.g. a CNN's convolutions, which peft has no default for
        return LoraConfig(
            task_type=task.peft_task_type,
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            init_lora_weights=True if self.lora_init == "default" else self.lora_init,
            modules_to_save=head_names or None,
        )

    def prepare(self, model: nn.Module, task: Any, head_names: list[str]) -> nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if self.quantization is not None and not fsdp_enabled():
            # Casts the non-quantized parts (norms, head) to float32 for stable training; not under FSDP,
            # which needs one dtype per shard group. Activation checkpointing is the engine's choice
            # (--gradient_checkpointing), not forced here.
            quantized = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
            check(bool(quantized), f"--quantization {self.quantization}: bitsandbytes quantizes linear layers only, "
                  f"and {type(model).__name__} has none outside its head (a convolutional network?), so nothing "
                  "would be quantized. Use lora on the full-precision model.")
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        try:
            model = get_peft_model(model, self.peft_config(task, head_names, model))
        except ValueError as exc:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, nn.Linear) and n.split(".")[0] not in head_names})
            raise PeftkitError(f"LoRA could not be applied: {str(exc).rstrip('. ')}. Pass --lora_target_modules with "
                               f"names of linear layers in this model (e.g. {' '.join(linear[:8])}), or "
                               "all-linear.") from exc
        if self.rewrites_base:
            # The adapter as initialised: finalize_saved subtracts it from the trained one, which works only on
            # the rewritten base, to give an ordinary adapter for the original weights.
            from peft.utils import get_peft_model_state_dict

            self._initial_adapter = {k: v.detach().to("cpu", copy=True) for k, v in
                                     get_peft_model_state_dict(model).items() if ".lora_A." in k or ".lora_B." in k}
        return model

    def plan_model(self, model: nn.Module, task: Any, head_names: list[str]) -> nn.Module:
        """The adapters on the meta model; a quantized base stays unquantized there (its stored size is
        :meth:`weight_bits`'s; bitsandbytes' layers, like plain frozen ones, keep no input for backward)."""
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(task, head_names, model))

    def weight_bits(self, model: nn.Module, head_names: list[str]) -> dict[str, float]:
        """bitsandbytes' storage: NF4/FP4 packs two weights per byte plus a scale per block of 64 (float32, or
        with double quantization 8 bits and a float32 per 256 blocks); int8 a byte per weight plus a float32
        scale per output row. Every linear layer but the new head and the output layer is quantized."""
        if self.quantization is None:
            return {}
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        skip = set(head_names)
        bits: dict[str, float] = {}
        for name, module in model.named_modules():
            if (not isinstance(module, nn.Linear) or module is output
                    or any(name == h or name.startswith(h + ".") for h in skip)):
                continue
            if self.quantization == "int8":
                bits[name] = 8 + 32 / module.in_features
            else:
                bits[name] = 4 + (8 / 64 + 32 / (64 * 256) if self.bnb_4bit_use_double_quant else 32 / 64)
        return bits

    def finalize_saved(self, output_dir: Path) -> None:
        """Turn a saved PiSSA/OLoRA adapter into an ordinary one for the original base: with W = W_res + B0 A0
        and W_res + B A after training, the update is B A - B0 A0 = [B | -B0] [A ; A0], an adapter of rank 2r
        with the same scale (alpha doubles; times sqrt 2 under rsLoRA). peft's own conversion
        (``path_initial_model_for_weight_conversion``) does the same but fails on a model with a new head."""
        if self._initial_adapter is None:
            return
        from safetensors.torch import load_file, save_file

        weights = load_file(output_dir / "adapter_model.safetensors")
        for key, initial in self._initial_adapter.items():
            check(key in weights, f"The saved adapter has no {key}: cannot convert it for the original base.")
            dim = 0 if ".lora_A." in key else 1
            weights[key] = torch.cat([weights[key], initial if dim == 0 else -initial], dim=dim).contiguous()
        save_file(weights, output_dir / "adapter_model.safetensors", metadata={"format": "pt"})
        config = json.loads((output_dir / "adapter_config.json").read_text())
        config["r"] *= 2
        config["lora_alpha"] *= 2**0.5 if config.get("use_rslora") else 2
        config["init_lora_weights"] = True
        config["peftkit_converted_from"] = self.lora_init
        (output_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))


@dataclass
class LoRAPlus(LoRA):
    """LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn ``loraplus_lr_ratio`` times faster than A.

    Its default learning rate (A's) is a quarter of LoRA's, so B learns at 4x LoRA's rate: at LoRA's own rate,
    B at 16x did not learn in the 126 steps of 1,000 built-in reviews (test accuracy 57.6 / 63.7 / 57.6, the
    majority class being 57.6); at 5e-4, 73.9 on seed 42 (2026-11-26)."""

    default_learning_rate: ClassVar[float] = 5e-4
    lr_reference_batch: ClassVar[int] = 16  # where 5e-4 was chosen: 1,000 reviews, batch 16
