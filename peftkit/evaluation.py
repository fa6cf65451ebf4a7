"""The one evaluation loop: training-time selection, `peftkit eval` and merge parity all run it.

Each batch becomes a few small per-example rows (the task decides which: prediction, label, summed loss
and token count, ...). Rows, not logits, are gathered across processes, with the duplicates that even
batches add dropped, and the task computes its metrics once over every example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader

from peftkit.memory import HOST
from peftkit.sampling import LENGTH_KEY, LengthSortedSampler

TASK_KEY_PREFIX = "task_"  # batch keys a task adds for its own evaluation (token_cls: word tags); not model inputs


def model_inputs(batch: dict) -> dict:
    """The batch without the task's own keys: what the model's forward takes."""
    return {k: v for k, v in batch.items() if not k.startswith(TASK_KEY_PREFIX)}


def eval_loader(ds: Dataset, batch_size: int, collate_fn: Callable, num_workers: int = 0) -> DataLoader:
    """Batches for evaluation, longest examples first: similar lengths share a batch and pad little (random
    or data-order batches of the built-in reviews are half padding). The metrics do not depend on the order."""
    sampler = LengthSortedSampler([len(ids) for ids in ds[LENGTH_KEY]]) if LENGTH_KEY in ds.column_names else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      generator=own_generator())


def in_order(model, data: Dataset, collate_fn: Callable, batch_size: int):
    """``(outputs, batch)`` over ``data`` in its own order (example i of the split is row i), without gradients:
    `peftkit analyze` pairs each prediction with its raw example."""
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_fn, generator=own_generator())
    device = next(p.device for p in model.parameters())
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            yield model(**model_inputs(batch)), batch


def own_generator() -> torch.Generator:
    """A loader without a generator draws its workers' base seed from the global RNG each time it is iterated,
    which moves the random numbers that dropout uses afterwards: evaluating (or caching the test split's features)
    would change how training goes on. Its own generator leaves them alone."""
    return torch.Generator().manual_seed(0)


@torch.no_grad()
def evaluate(acc: Accelerator, task, model, loader: DataLoader, forward: Callable | None = None,
             collect: Callable | None = None) -> dict[str, float]:
    """Task metrics over every example of ``loader`` exactly once, however many processes share the work.

    ``forward(model, batch)`` replaces the task's forward (the feature cache uses it); ``collect(outputs,
    batch)`` sees every batch's outputs (merge parity keeps the logits it compares)."""
    was_training = model.training
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        labels = {k: v for k, v in batch.items() if k == "labels"}  # the forward may consume the batch
        out = forward(model, batch) if forward else task.forward(model, batch)
        part = acc.gather_for_metrics(task.eval_rows(out, batch | labels))
        for key, value in part.items():
            rows.setdefault(key, []).append(value.detach().cpu())
        if collect is not None:
            collect(out, batch | labels)
        del out, batch
        HOST.release()
    model.train(was_training)
    return task.compute_metrics({key: torch.cat(parts) for key, parts in rows.items()})
