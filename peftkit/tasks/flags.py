"""The flags of the built-in tasks: light dataclasses (no torch, no transformers) that `peftkit train --help` and
the argument parser read. Each task subclasses its flags with the code that does the work (``tasks/<task>.py``),
which is imported only once a run needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from peftkit.config import BUILTIN_LM, BUILTIN_VISION_MODEL
from peftkit.tasks.base import TaskDefaults, TaskFlags


@dataclass
class TextClsFlags(TaskFlags):
    """text_cls: sequence classification, single sentences and pairs."""

    pooling: str = field(
        default="auto",
        metadata={"help": "text_cls: what the classifier reads: pooler (the architecture's own head: BERT's pooler, "
                  "the first token), mean, cls or max of the last hidden states (no dense layer), or auto: the "
                  "pooling a sentence-embedding model declares when no backbone weight trains (head, bitfit), "
                  "the architecture's own otherwise."},
    )


@dataclass
class CausalLMFlags(TaskFlags):
    """causal_lm: supervised fine-tuning of a decoder LM."""

    messages_column: str | None = field(
        default=None, metadata={"help": "causal_lm: column of conversations (lists of {role, content} turns), "
                                "rendered by the chat template. Default: `messages` when the data has it."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "causal_lm: prompt column (with --completion_column). Default: `prompt`."})
    completion_column: str | None = field(
        default=None, metadata={"help": "causal_lm: completion column; the loss falls on it. Default: `completion`."})
    train_on_prompt: bool = field(
        default=False, metadata={"help": "causal_lm: put the loss on prompt / user tokens too (default: only on "
                                 "completions and assistant turns)."})
    packing: bool = field(
        default=False, metadata={"help": "causal_lm: pack several training examples into each --max_seq_length "
                                 "row (attention stays within each example)."})
    generation_max_new_tokens: int = field(
        default=32, metadata={"help": "causal_lm: tokens generated per held-out prompt at the final evaluation."})
    max_generation_samples: int = field(
        default=200, metadata={"help": "causal_lm: held-out prompts generated for (0 = no generation)."})
    defaults: ClassVar[TaskDefaults] = TaskDefaults(training={
        "model_name_or_path": BUILTIN_LM, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "max_seq_length": 512, "num_train_epochs": 1.0})



@dataclass
class PreferenceFlags(TaskFlags):
    """preference: tune a causal LM to prefer each pair's chosen answer to its rejected one (DPO, IPO, SimPO)."""

    prompt_column: str | None = field(
        default=None, metadata={"help": "preference: prompt column (text or turns). Default: `prompt` when the data "
                                "has it; without one, the prompt is what chosen and rejected share at the start."})
    chosen_column: str = field(
        default="chosen", metadata={"help": "preference: column of the preferred answers (text, or the assistant's "
                                    "turns)."})
    rejected_column: str = field(
        default="rejected", metadata={"help": "preference: column of the answers to move away from."})
    loss_type: str = field(
        default="dpo", metadata={"help": "preference: dpo (sigmoid loss on the log-ratio margin against the "
                                 "reference), ipo (squared loss on the per-token margin, for data where DPO "
                                 "overfits) or simpo (reference-free: length-normalised log-probabilities with a "
                                 "target margin --simpo_gamma; needs no reference pass)."})
    beta: float | None = field(
        default=None, metadata={"help": "preference: how far the tuned model may move from the reference (the "
                                "strength of the implicit KL penalty; rewards are beta x log-ratios). Default: 0.1 "
                                "for dpo and ipo, 2.0 for simpo."})
    simpo_gamma: float = field(
        default=1.0, metadata={"help": "preference: simpo's target margin between the chosen and rejected rewards."})
    share_prompt: bool = field(
        default=True, metadata={"help": "preference: run each prompt once and let both answers read its keys and "
                                "values (exact, and about half the work where prompts are longer than answers); "
                                "--no_share_prompt runs each answer as a whole prompt + answer row. Off by itself "
                                "under --gradient_checkpointing, which keeps no keys and values."})
    generation_max_new_tokens: int = field(
        default=32, metadata={"help": "preference: tokens generated per held-out prompt at the final evaluation."})
    max_generation_samples: int = field(
        default=100, metadata={"help": "preference: held-out prompts generated for and scored against the chosen "
                               "answer, before and after training (0 = no generation)."})
    defaults: ClassVar[TaskDefaults] = TaskDefaults(training={
        "model_name_or_path": BUILTIN_LM, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "max_seq_length": 512, "num_train_epochs": 1.0})

@dataclass
class TokenClsFlags(TaskFlags):
    """token_cls: a tag for every word (NER, POS, chunking)."""

    label_all_tokens: bool = field(
        default=False, metadata={"help": "token_cls: train on every sub-token of a word (its later pieces get the "
                                 "I- form of a B- tag). Default: only a word's first sub-token carries its tag; "
                                 "evaluation always scores words by their first sub-token."})
    label_names: list[str] | None = field(
        default=None, metadata={"help": "token_cls: tag names for integer tags that carry none (tag i is the i-th "
                                "name), e.g. --label_names O B-PER I-PER. Not needed for string tags or a "
                                "dataset whose tag column is a ClassLabel sequence."})
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        training={"text_column": "tokens", "label_column": "ner_tags"},
        # Tagging leaves a model predicting `O` for every word for its first few hundred steps. 300 built-in
        # sentences at the derived batch 32 (100 steps) left full fine-tuning there on all of seeds 42-44 (entity F1
        # 0.0); at batch 8 (380 steps) full reached 0.26 / 0.30 / 0.30, head and LoRA's mean rose (LoRA at its 2e-3
        # still lost seed 43: README, "A few hundred sentences", 2026-11-27). The whole built-in data (1,891
        # sentences, 6 epochs) still gets batch 32: 360 steps.
        min_steps=300,
        # ... and at that batch 8, LoRA's 2e-3 left seed 43 at F1 0.09, while 1e-3 = 2e-3 x sqrt(8 / 32) learned on
        # every seed (0.28 / 0.32 / 0.33; QLoRA and DoRA alike); the whole data at batch 32 keeps 2e-3 (0.40 against
        # 0.37 at 1e-3). Text classification does not want it: 300 reviews at batch 8 (152 steps) scored 0.742 at
        # 2e-3 and 0.720 at 1e-3 on average (README, "A few hundred sentences").
        lr_follows_batch=True)


@dataclass
class ImageClsFlags(TaskFlags):
    """image_cls: one label per image."""

    image_column: str = field(
        default="image", metadata={"help": "image_cls: column of a CSV/JSON file (image paths, relative to the file) "
                                  "or of a Hub dataset (an Image feature) holding the images."})
    augment: str = field(
        default="none", metadata={"help": "image_cls: random changes to training images, each epoch anew: none, "
                                  "flip (horizontal), flip_crop (random resized crop keeping 25-100%% of the area, "
                                  "then flip) or randaugment (flip, then RandAugment). Evaluation always uses the "
                                  "processor's deterministic resize and crop."})
    skip_bad_images: bool = field(
        default=False, metadata={"help": "image_cls: leave out (and count) images that cannot be read, instead of "
                                 "refusing the data."})
    defaults: ClassVar[TaskDefaults] = TaskDefaults(
        training={"model_name_or_path": BUILTIN_VISION_MODEL},
        # Full fine-tuning of a CNN with AdamW wants more than the 5e-5 chosen for transformers: 3 epochs of 320
        # built-in digits with flips (seed 42, 2026-11-27) gave validation accuracy 0.69 at 1e-4, 0.84 at 3e-4 and
        # 0.76 at 1e-3 (5e-5: 0.62 without flips); partial (the top 2 stages) 0.73 at its 1e-4 and 0.86 at 3e-4.
        # LoRA's 2e-3 gave 0.87 (5e-3: 0.91, one seed) and head's 2e-2 0.80 there: kept.
        learning_rates={"full": 3e-4, "partial": 3e-4})
