"""Train a head on cached backbone features: exact when the backbone is frozen and in eval mode.

A frozen backbone without dropout maps each example to the same outputs every epoch, so we run it once
per split and then swap it for :class:`CachedBackbone`, which returns the stored outputs. The task model's
own forward (its head, its dropout before the head, its loss) runs unchanged on top, which keeps this
generic across architectures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from peftkit.evaluation import model_inputs
from peftkit.modeling import backbone

INDEX_KEY = "feature_idx"


def backbone_is_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in backbone(model).parameters())


def backbone_weights_frozen(model: nn.Module) -> bool:
    """No weight of the backbone trains, at most its biases (head, bitfit): its features stay what it was
    trained to give, so they are best read the way it was trained to be read."""
    return not any(p.requires_grad and not name.endswith(".bias") for name, p in backbone(model).named_parameters())


class CachedBackbone(nn.Module):
    """Stands in for the backbone; returns the stored outputs of the examples in ``self.indices``."""

    def __init__(self, output_cls: type, per_token: set[str]):
        super().__init__()
        self.output_cls, self.per_token = output_cls, per_token
        self.fields: set[str] = set()  # the outputs the head reads: the only ones stored
        self.dropped: set[str] = set()  # tensor outputs it does not read
        self.store: dict[str, list[dict[str, torch.Tensor]]] = {}
        self.split, self.indices = "train", None

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, **_: object):
        rows = [self.store[self.split][i] for i in self.indices.tolist()]
        if input_ids is None and attention_mask is None:  # an image model: every output is per example
            device = pixel_values.device if pixel_values is not None else self.indices.device
            shape, mask = (len(rows),), None
        else:
            shape = (input_ids if input_ids is not None else attention_mask).shape
            mask = attention_mask.bool() if attention_mask is not None else torch.ones(shape, dtype=torch.bool)
            device = mask.device
        # Outputs the head never reads keep a zero-width placeholder: models index outputs by position
        # (BERT reads `outputs[1]`), so a missing field would shift the others.
        out = {key: torch.zeros((*shape, 0) if key in self.per_token else (shape[0], 0), device=device)
               for key in self.dropped}
        for key, first in rows[0].items():
            if key in self.per_token:  # scatter each example's real-token vectors back into its padding
                full = first.new_zeros((*shape, *first.shape[1:]), device=device)
                full[mask] = torch.cat([r[key] for r in rows]).to(device)
                out[key] = full
            else:
                out[key] = torch.stack([r[key] for r in rows]).to(device)
        return self.output_cls(**out)


class _Fixed(nn.Module):
    """A backbone stand-in that returns one fixed output (for probing what the head reads)."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


class FeatureCache:
    """Computes backbone outputs per split and swaps the backbone in and out of the task model."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.prefix = model.base_model_prefix
        self.real = backbone(model)
        self.stub: CachedBackbone | None = None

    @torch.no_grad()
    def build(self, split: str, loader: DataLoader, device: torch.device, show_progress: bool) -> None:
        self.real.eval()
        rows: list[dict[str, torch.Tensor]] = []
        for batch in tqdm(loader, desc=f"Caching {split} features", disable=not show_progress, leave=False):
            batch = {k: v.to(device) for k, v in model_inputs(batch).items() if k not in ("labels", INDEX_KEY)}
            out = self.real(**batch)
            mask = batch.get("attention_mask")
            if mask is None and "input_ids" in batch:
                mask = torch.ones(batch["input_ids"].shape, dtype=torch.long, device=device)
            fields = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
            if self.stub is None:  # token outputs are stored without padding; an image model's are all per image
                per_token = {k for k, v in fields.items() if mask is not None and v.shape[:2] == mask.shape}
                self.stub = CachedBackbone(type(out), per_token)
                self.stub.fields = self._fields_the_head_reads(batch, type(out), fields)
                self.stub.dropped = set(fields) - self.stub.fields
            fields = {k: v for k, v in fields.items() if k in self.stub.fields}
            for i in range(next(iter(batch.values())).shape[0]):
                keep = mask[i].bool() if mask is not None else None
                rows.append({k: (v[i][keep] if k in self.stub.per_token else v[i]).cpu() for k, v in fields.items()})
        self.stub.store[split] = rows

    def _fields_the_head_reads(self, batch: dict, output_cls: type, fields: dict[str, torch.Tensor]) -> set[str]:
        """Which backbone outputs the task model's forward actually uses, found by poisoning each with NaN.

        A BERT classifier reads only the pooled output, so its per-token hidden states (by far the largest
        part of the cache) need not be stored; a Llama classifier reads the hidden states. NaN propagates
        through any arithmetic that touches it, so finite logits prove a field unused.
        """
        needed = set()
        was_training = self.model.training
        self.model.eval()
        for key in fields:
            poisoned = {k: torch.full_like(v, float("nan")) if k == key else v for k, v in fields.items()}
            setattr(self.model, self.prefix, _Fixed(output_cls(**poisoned)))
            try:
                logits = self.model(**batch).logits
            finally:
                setattr(self.model, self.prefix, self.real)
            if not torch.isfinite(logits).all():
                needed.add(key)
        self.model.train(was_training)
        return needed or set(fields)

    def attach(self) -> None:
        setattr(self.model, self.prefix, self.stub)

    def detach(self) -> None:
        setattr(self.model, self.prefix, self.real)

    def select(self, split: str, indices: torch.Tensor) -> None:
        self.stub.split, self.stub.indices = split, indices
