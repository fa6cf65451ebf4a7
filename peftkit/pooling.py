"""How a sequence classifier turns per-token vectors into one: the architecture's own head, or the pooling a
sentence-embedding model was trained for.

A BERT classifier reads its pooler (a dense layer and tanh over the first token). A sentence-embedding
model such as all-MiniLM-L6-v2 was trained to be read by the mean of its token vectors instead, and
declares so in its sentence-transformers files (``modules.json`` -> ``1_Pooling/config.json``); a head
trained on its pooler output learns from features the backbone was never trained to give.

``--pooling mean|cls|max`` replaces what the backbone hands the head: the pooled vector itself (no dense
layer, no tanh) as the pooler output where the architecture has a pooler (BERT), else as the first token's
vector, which RoBERTa/DistilBERT/ELECTRA-style heads read. It is a forward hook on the backbone, so the
weights, ``save_pretrained`` and peft stay untouched, and the feature cache stores the pooled vectors
(still exact: pooling has no parameters). A model saved from such a run is plain transformers weights, but
plain transformers would pool it its own way: peftkit loads it with the pooling it was trained with
(recorded in the run), and the model card and merge report say so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from peftkit.errors import check
from peftkit.modeling import backbone

logger = logging.getLogger(__name__)

POOLINGS = ("auto", "pooler", "mean", "cls", "max")
HOOKED = ("mean", "cls", "max")  # the modes this module adds; "pooler" is the architecture's own head
ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def declared_pooling(model_dir: str | Path) -> str | None:
    """The pooling a sentence-transformers model directory declares, if it declares one we implement."""
    modules = Path(model_dir) / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text())
        entry = next(e for e in entries if str(e.get("type", "")).endswith("Pooling"))
        flags = json.loads((Path(model_dir) / entry["path"] / "config.json").read_text())
    except (StopIteration, OSError, ValueError, KeyError, TypeError):
        return None
    modes = [mode for key, mode in ST_MODES.items() if flags.get(key)]
    return modes[0] if len(modes) == 1 else None


def resolve(requested: str, model_dir: str | Path, backbone_weights_frozen: bool,
            trains_embeddings: bool = False) -> tuple[str, str]:
    """The pooling a run uses, and why. ``auto``: the model's declared pooling when no backbone weight trains
    (head; bitfit, whose biases alone do not adapt a pooler the model was not trained with: with this model's
    pooler BitFit stayed at the majority class on 1,000 reviews, with mean pooling 74.9, seed 42); otherwise
    the architecture's own head, which the backbone adapts to and which keeps the model plain transformers.
    ``trains_embeddings`` (--contrastive trains the pooled vector itself): the declared pooling, else mean (as
    sentence-transformers pools a model that declares none)."""
    if requested != "auto":
        return requested, "--pooling"
    declared = declared_pooling(model_dir)
    if trains_embeddings:
        return declared or "mean", ("the contrastive stage trains the pooled embedding the head reads: "
                                    + (f"the model declares {declared} pooling" if declared else "mean pooling"))
    if declared is None:
        return "pooler", "the model declares no sentence-embedding pooling"
    if backbone_weights_frozen:
        return declared, f"no backbone weight trains and the model declares {declared} pooling"
    return "pooler", (f"the backbone trains (the model declares {declared} pooling; pass --pooling {declared} to "
                      "use it)")


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One vector per sequence from ``hidden`` (batch, tokens, dim), padding excluded."""
    if mode == "cls":
        return hidden[:, 0]
    if mask is None:
        mask = hidden.new_ones(hidden.shape[:2])
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)


def apply(model: nn.Module, mode: str) -> None:
    """Make ``model``'s head read ``mode``-pooled vectors (nothing to do for ``pooler``). Idempotent."""
    if mode not in HOOKED:
        return
    body = backbone(model)
    check(not getattr(model.config, "is_decoder", False) and "CausalLM" not in "".join(
          getattr(model.config, "architectures", None) or []) and not hasattr(model, "score"),
          f"--pooling {mode}: {type(model).__name__} classifies from its last token (a decoder); only encoder "
          "classifiers (BERT, RoBERTa, DistilBERT, ...) can pool differently. Use --pooling pooler.")
    if getattr(body, "_peftkit_pooling", None) == mode:
        return
    check(getattr(body, "_peftkit_pooling", None) is None, "The model already pools another way.")

    def hook(module, args, kwargs, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        pooled = pool(hidden, kwargs.get("attention_mask"), mode)
        if getattr(output, "pooler_output", None) is not None:
            output.pooler_output = pooled
        else:
            output.last_hidden_state = torch.cat([pooled.unsqueeze(1), hidden[:, 1:]], dim=1)
        return output

    body.register_forward_hook(hook, with_kwargs=True)
    body._peftkit_pooling = mode
