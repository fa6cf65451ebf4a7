"""The flags of the built-in strategies: light dataclasses (no torch) that `peftkit train --help` and the argument
parser read. Each strategy subclasses its flags with the code that adapts the model (``freezing.py``, ``lora.py``,
``ia3.py``), imported only once a run needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftkit.config import UNFREEZE_BY

LLRD_HELP = ("full/partial: layer-wise learning-rate decay: each transformer layer learns this many times as fast "
             "as the one above it (the head and top layer at the full rate, the embeddings slowest); 1 = off, "
             "0.8-0.95 are usual.")
GU_HELP = ("full/partial: gradual unfreezing: the head (and what sits above the layers) trains alone at first, then "
           "one more layer from the top joins at even intervals until every trainable layer trains, "
           f"{UNFREEZE_BY:g} of the way through the run. Guards pretrained features against a new head's "
           "first large gradients.")


@dataclass
class NoFlags:
    """A strategy without flags of its own (bitfit)."""


@dataclass
class FullFlags:
    layerwise_lr_decay: float = field(default=1.0, metadata={"help": LLRD_HELP})
    gradual_unfreezing: bool = field(default=False, metadata={"help": GU_HELP})


@dataclass
class HeadFlags:
    cache_features: bool = field(
        default=True,
        metadata={"help": "head: run the frozen backbone once (eval mode) and train the head on the cached "
                  "features. Exact, and much faster than a forward pass per step."},
    )


@dataclass
class PartialFlags:
    num_trainable_layers: int = field(
        default=2, metadata={"help": "partial: how many of the top transformer layers train."}
    )
    layerwise_lr_decay: float = field(default=1.0, metadata={"help": LLRD_HELP})
    gradual_unfreezing: bool = field(default=False, metadata={"help": GU_HELP})


@dataclass
class LoRAFlags:
    lora_r: int = field(default=8, metadata={"help": "lora: adapter rank."})
    lora_alpha: int = field(default=16, metadata={"help": "lora: scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "lora: dropout on the adapter input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "lora: module names to adapt, or all-linear (every linear layer but the output "
                  "head). Default: peft's choice for the architecture (query/value for BERT, q_proj/v_proj for "
                  "Llama)."},
    )
    use_dora: bool = field(default=False, metadata={"help": "lora: weight-decomposed LoRA (DoRA)."})
    lora_init: str = field(
        default="default",
        metadata={"help": "lora: adapter initialisation: default (B = 0), gaussian, pissa (the weights' top singular "
                  "directions train, the rest stays frozen; pissa_niter_N: a fast randomised SVD with N iterations, "
                  "for large models), or olora (QR). pissa and olora are saved converted back to an ordinary "
                  "adapter on the original base (of rank 2r), so loading, merging and serving are as for LoRA."},
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "lora: rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (rsLoRA)."}
    )
    loraplus_lr_ratio: float = field(
        default=0.0, metadata={"help": "lora: train the B matrices at this many times the learning rate of A (LoRA+; "
                               "0 = off, the same rate)."}
    )
    quantization: str | None = field(
        default=None, metadata={"help": "lora: quantize the frozen base: nf4 or fp4 (4-bit) or int8 (QLoRA)."}
    )
    bnb_4bit_compute_dtype: str = field(
        default="auto", metadata={"help": "qlora: dtype of 4-bit matmuls: float32, bfloat16, float16 or auto."}
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "qlora: also quantize the quantization constants (saves memory)."}
    )


@dataclass
class IA3Flags:
    ia3_target_modules: list[str] | None = field(
        default=None, metadata={"help": "ia3: modules to rescale. Default: peft's (key, value, output.dense for "
                                "BERT; k_proj, v_proj, down_proj for Llama)."}
    )
    ia3_feedforward_modules: list[str] | None = field(
        default=None, metadata={"help": "ia3: which of them are feed-forward (scaled on their input). Default: "
                                "peft's."}
    )
