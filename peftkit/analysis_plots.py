"""The pictures of `peftkit analyze`: a confusion matrix with its counts, and a reliability diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(path: Path, counts: torch.Tensor, names: list[str], title: str) -> None:
    """Rows: true label, columns: predicted; each cell shows its count, coloured by its share of the row (so that
    small classes show as clearly as large ones)."""
    plt = _pyplot()
    n = len(names)
    side = min(max(4.5, 0.55 * n + 2.5), 24)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    rows = counts.sum(1, keepdim=True).clamp(min=1)
    share = (counts / rows).numpy()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    crowded = n * max(map(len, names)) > 40  # long labels, or many: slanted, so that they do not overlap
    ax.set_xticks(range(n), labels=names, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    size = 10 if n <= 10 else 7 if n <= 25 else 5
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=size,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reliability(path: Path, calibration: dict[str, Any], confidence: torch.Tensor, n_bins: int) -> None:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), and how confidences spread."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bins = calibration["bins"]
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    top.bar(centers, [b["accuracy"] for b in bins], width=widths, edgecolor="black", alpha=0.8, label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy in the bin")
    top.set_ylim(0, 1)
    top.set_title(f"Reliability: expected calibration error {calibration['expected_calibration_error']:.4f}",
                  fontsize=10)
    top.legend(loc="upper left")
    bottom.hist(confidence.numpy(), bins=n_bins, range=(0, 1), color="gray")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("examples")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
