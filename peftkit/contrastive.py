"""Few-shot classification's first stage (--contrastive): before the classifier is trained, the model (what the
strategy lets train: every weight, LoRA's adapters, ...) learns to embed examples of one class close together and
examples of different classes far apart, from pairs of the few labelled examples, as SetFit (Tunstall et al.
2022) does. The head is then trained on the adapted embeddings (runner: on cached features, or end to end).

Pairs, as SetFit's default ("oversampling"): every unordered pair of training examples, an example with itself
included, is positive (same class) or negative; each kind is shuffled (seeded), the two alternate, and the smaller
kind is repeated up to the size of the larger. Asked for another number of pairs, each kind is cut or repeated
(as SetFit's ``num_iterations`` does). With k examples in each of c
classes there are c*k*(k+1)/2 positive and k*k*c*(c-1)/2 negative pairs.

Losses on the pooled embedding the head reads: ``cosine`` (SetFit's default: the squared error between the pair's
cosine similarity and 1 for a positive pair, 0 for a negative one) and ``supcon`` (supervised contrastive, Khosla
et al. 2020, over every embedding of the batch, with temperature 0.07).

The stage is one run of the engine (its own checkpoints under ``<output_dir>/contrastive``, N processes as one),
whose task side is :class:`PairObjective` and whose model is :class:`PairEncoder` around the classifier.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers.utils import ModelOutput

from peftkit.modeling import backbone

logger = logging.getLogger(__name__)

LOSSES = ("cosine", "supcon")
TEMPERATURE = 0.07  # supcon's, as in its paper
PAIR_PREFIX = "pair_"  # the second text of each pair in a batch: pair_input_ids, pair_attention_mask, ...


def pair_counts(classes: list[int]) -> tuple[int, int]:
    """(positive, negative) unordered pairs of ``classes``, an example with itself counted as positive."""
    sizes = [classes.count(c) for c in set(classes)]
    positive = sum(k * (k + 1) // 2 for k in sizes)
    n = len(classes)
    return positive, n * (n + 1) // 2 - positive


def setfit_count(classes: list[int]) -> int:
    """SetFit 1.2's number of pairs of ``classes``: every pair of the larger kind, and as many of the other (where
    there is another)."""
    positive, negative = pair_counts(classes)
    return (2 if positive and negative else 1) * max(positive, negative)


def draw_pairs(classes: list[int], seed: int, count: int | None = None) -> list[tuple[int, int]]:
    """``count`` index pairs of the examples of ``classes`` (default: ``setfit_count``), positive and
    negative in turn, each kind shuffled and repeated as often as it takes (see the module's docstring)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(classes)
    first, second = torch.triu_indices(n, n, offset=0)
    same = torch.tensor(classes)[first] == torch.tensor(classes)[second]
    kinds = []
    for mask in (same, ~same):
        chosen = torch.nonzero(mask).flatten()
        if len(chosen):
            kinds.append(chosen[torch.randperm(len(chosen), generator=generator)].tolist())
    count = count or setfit_count(classes)
    picks = [kinds[i % len(kinds)][(i // len(kinds)) % len(kinds[i % len(kinds)])] for i in range(count)]
    return [(int(first[j]), int(second[j])) for j in picks]


def pair_dataset(examples: Dataset, seed: int, count: int | None, offset: int = 0) -> Dataset:
    """The pairs of ``examples`` (rows with ``labels``, the class ids) as rows of two example indices (plus
    ``offset``: where ``examples`` start in the collator's table)."""
    pairs = draw_pairs(list(examples["labels"]), seed, count)
    return Dataset.from_dict({"first": [a + offset for a, _ in pairs], "second": [b + offset for _, b in pairs]})


class PairCollator:
    """Pair rows -> one batch holding both sides, each collated by the task's own collator: the first side's
    inputs under their own names, the second's prefixed ``pair_``; ``labels`` 1.0 for a positive pair, else 0.0;
    the classes of both sides for supcon."""

    def __init__(self, examples: Dataset, collate):
        self.examples, self.collate = examples, collate

    def __call__(self, rows: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        first = self.collate([self.examples[r["first"]] for r in rows])
        second = self.collate([self.examples[r["second"]] for r in rows])
        classes, pair_classes = first.pop("labels"), second.pop("labels")
        return {**first, **{PAIR_PREFIX + k: v for k, v in second.items()}, "classes": classes,
                "pair_classes": pair_classes, "labels": (classes == pair_classes).float()}


class PairEncoder(nn.Module):
    """The classifier's embedding of both sides of each pair, and the stage's loss. The embedding is what its head
    reads: the backbone's pooler output (the pooled vector, where the task pools: text_cls) or its first token."""

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        self.model, self.loss = model, loss

    def embed(self, **inputs: torch.Tensor) -> torch.Tensor:
        out = backbone(self.model)(**inputs)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def forward(self, labels: torch.Tensor, classes: torch.Tensor, pair_classes: torch.Tensor,
                **inputs: torch.Tensor) -> ModelOutput:
        first = self.embed(**{k: v for k, v in inputs.items() if not k.startswith(PAIR_PREFIX)})
        second = self.embed(**{k[len(PAIR_PREFIX):]: v for k, v in inputs.items() if k.startswith(PAIR_PREFIX)})
        similarity = F.cosine_similarity(first.float(), second.float(), dim=-1)
        if self.loss == "cosine":
            loss = F.mse_loss(similarity, labels.float())
        else:
            loss = supervised_contrastive(torch.cat([first, second]).float(), torch.cat([classes, pair_classes]))
        return ModelOutput(loss=loss, logits=similarity)


def supervised_contrastive(embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Khosla et al.'s L_out: for each embedding, the mean log-probability of the others of its class among all
    the others, at TEMPERATURE; embeddings without another of their class in the batch do not count."""
    z = F.normalize(embeddings, dim=-1)
    logits = z @ z.T / TEMPERATURE
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (classes[:, None] == classes[None, :]) & ~self_mask
    counts = positive.sum(1)
    has = counts > 0
    if not bool(has.any()):
        return embeddings.sum() * 0.0
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(1)[has] / counts[has]
    return -per_anchor.mean()


class PairObjective:
    """What the engine asks of a task, for the pair stage: the loss averages over pairs; evaluation reports the
    pair loss (selects) and how often the cosine similarity sides with the pair's label (above 0.5 when the pair
    is positive)."""

    name: ClassVar[str] = "contrastive"
    metrics: ClassVar[dict[str, str]] = {"loss": "min", "pair_accuracy": "max"}
    default_metric: ClassVar[str] = "loss"

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["labels"])

    def forward(self, model, batch: dict[str, torch.Tensor]):
        from peftkit.evaluation import model_inputs

        return model(**model_inputs(batch))

    def start_epoch(self, collator, epoch: int, seed: int) -> None:
        return None

    def has_loss_inputs(self) -> bool:
        return False

    def eval_rows(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        similarity, labels = outputs.logits.float(), batch["labels"].float()
        return {"error": (similarity - labels) ** 2, "agree": ((similarity > 0.5).float() == labels).float()}

    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"loss": float(rows["error"].mean()), "pair_accuracy": float(rows["agree"].mean())}
