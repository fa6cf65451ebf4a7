"""The classic alternatives to a model's own cross-entropy: class weights, focal loss, label smoothing.

With none of them asked for, the engine uses the model's own loss, unchanged. Otherwise the loss is
computed here from the logits and labels the task hands over (``task.loss_inputs``: one row per predicted
label, -100 where nothing is supervised) as a per-row loss averaged over the supervised rows, so that the
engine's normalisation over micro-batches and processes stays exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from peftkit.config import parse_class_weights
from peftkit.errors import check

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """scikit-learn's ``balanced``: n_examples / (n_classes * count of the class); a class absent from the
    training data gets weight 0 (it never occurs as a target)."""
    counts = counts.double()
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


@dataclass
class Loss:
    """A per-row loss: weighted and/or focal cross-entropy with optional label smoothing."""

    weight: torch.Tensor | None = None
    focal_gamma: float = 0.0
    label_smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = logits.float(), labels.long()
        keep = labels != IGNORE_INDEX
        n = int(keep.sum())
        if n == 0:
            return logits.sum() * 0.0
        logits, labels = logits[keep], labels[keep]
        weight = self.weight.to(logits.device) if self.weight is not None else None
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        if self.focal_gamma:
            p_true = torch.softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
            ce = (1 - p_true).clamp(min=0) ** self.focal_gamma * ce
        if weight is not None:
            ce = ce * weight[labels]
        return ce.sum() / n


def build_loss(args, task, train_dataset) -> Loss | None:
    """The loss the flags ask for, or None for the model's own."""
    weights = parse_class_weights(args.class_weights)
    if weights is None and args.loss == "cross_entropy" and not args.label_smoothing:
        return None
    check(task.has_loss_inputs(), f"--loss, --class_weights and --label_smoothing need "
          f"logits and labels from the task, and task {task.name!r} does not provide them.")
    weight = None
    if weights is not None:
        counts = task.class_counts(train_dataset)
        check(counts is not None, f"--class_weights applies to classification tasks; task {task.name!r} has no "
              "classes to weigh.")
        if weights == "balanced":
            weight = balanced_weights(counts)
        else:
            check(len(weights) == len(counts), f"--class_weights has {len(weights)} value(s) for {len(counts)} "
                  f"classes (in label order: {', '.join(task.labels)}).")
            weight = torch.tensor(weights)
        logger.info("Class weights: %s (training counts %s).", [round(float(w), 4) for w in weight], counts.tolist())
    return Loss(weight=weight, focal_gamma=args.focal_gamma if args.loss == "focal" else 0.0,
                label_smoothing=args.label_smoothing)
