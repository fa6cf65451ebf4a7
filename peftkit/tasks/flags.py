"""The flags of the built-in tasks: light dataclasses (no torch, no transformers) that `peftkit train --help` and
the argument parser read. Each task subclasses its flags with the code that does the work (``tasks/<task>.py``),
which is imported only once a run needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from peftkit.config import BUILTIN_LM, BUILTIN_VISION_MODEL


@dataclass
class TextClsFlags:
    """text_cls: sequence classification, single sentences and pairs."""

    pooling: str = field(
        default="auto",
        metadata={"help": "text_cls: what the classifier reads: pooler (the architecture's own head: BERT's pooler, "
                  "the first token), mean, cls or max of the last hidden states (no dense layer), or auto: the "
                  "pooling a sentence-embedding model declares when no backbone weight trains (head, bitfit), "
                  "the architecture's own otherwise."},
    )
    training_defaults: ClassVar[dict[str, Any]] = {}  # flag defaults of this task (none: the global ones)


@dataclass
class CausalLMFlags:
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
    training_defaults: ClassVar[dict[str, Any]] = {
        "model_name_or_path": BUILTIN_LM, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "max_seq_length": 512, "num_train_epochs": 1.0}


@dataclass
class TokenClsFlags:
    """token_cls: a tag for every word (NER, POS, chunking)."""

    label_all_tokens: bool = field(
        default=False, metadata={"help": "token_cls: train on every sub-token of a word (its later pieces get the "
                                 "I- form of a B- tag). Default: only a word's first sub-token carries its tag; "
                                 "evaluation always scores words by their first sub-token."})
    label_names: list[str] | None = field(
        default=None, metadata={"help": "token_cls: tag names for integer tags that carry none (tag i is the i-th "
                                "name), e.g. --label_names O B-PER I-PER. Not needed for string tags or a "
                                "dataset whose tag column is a ClassLabel sequence."})
    training_defaults: ClassVar[dict[str, Any]] = {"text_column": "tokens", "label_column": "ner_tags"}


@dataclass
class ImageClsFlags:
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
    training_defaults: ClassVar[dict[str, Any]] = {"model_name_or_path": BUILTIN_VISION_MODEL}
