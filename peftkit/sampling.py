"""The order in which the engine visits the training examples.

Random batches pad every example to the batch's longest: on the built-in reviews (median 26 tokens, longest 78)
only about half of what a batch of 32 computes is real tokens. Grouping examples of similar length into the same
batch, as transformers' ``group_by_length`` does, removes most of that padding. The order stays a function of the
sampler's generator alone, so resuming restores it exactly, and groups are formed per *global* batch (every
process's batch of one step together), so N processes train on the same batches as one process with the same
global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

LENGTH_KEY = "input_ids"  # the column whose length orders batches (--group_by_length; evaluation)

# Examples are sorted by length within windows of this many global batches: wide enough to find neighbours of
# similar length, narrow enough that each window is still a random draw from the whole data (transformers: 50).
WINDOW_BATCHES = 50


class LengthGroupedSampler(Sampler[int]):
    """A random permutation of ``range(len(lengths))`` in which every run of ``global_batch`` consecutive
    indices holds examples of similar length.

    Per epoch: shuffle, sort by length within windows of WINDOW_BATCHES global batches, cut into global
    batches, shuffle the batches. The batch holding the longest example goes first, so a run whose batches do
    not fit in memory fails on its first step rather than hours later; the one short batch (when the data size
    is not a multiple of ``global_batch``) goes last, where a data loader expects it. ``generator`` is the only
    source of randomness (Accelerate shares it across processes; the engine saves and restores it)."""

    def __init__(self, lengths: Sequence[int], global_batch: int, generator: torch.Generator):
        self.lengths = list(lengths)
        self.global_batch = max(1, global_batch)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """One epoch's global batches, in order (draws from the generator)."""
        lengths, size = self.lengths, self.global_batch
        order = torch.randperm(len(lengths), generator=self.generator).tolist()
        window = size * WINDOW_BATCHES  # a multiple of the batch: only the last window leaves a short batch
        batches = []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window], key=lambda i: -lengths[i])  # stable: ties stay shuffled
            batches += [part[i:i + size] for i in range(0, len(part), size)]
        short = [b for b in batches if len(b) < size]
        full = [b for b in batches if len(b) == size]
        full = [full[i] for i in torch.randperm(len(full), generator=self.generator).tolist()]
        if full:
            longest = max(range(len(full)), key=lambda i: lengths[full[i][0]])  # each batch starts at its longest
            full[0], full[longest] = full[longest], full[0]
        return full + short

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


def real_token_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of the tokens computed for ``batches`` (each padded to its longest) that are real."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real / padded if padded else 1.0


class LengthSortedSampler(Sampler[int]):
    """Evaluation order: longest example first, equal lengths in data order. Batches of similar length pad
    little (the metrics do not depend on the order), and the largest batch comes first, so an evaluation that
    does not fit in memory fails at once. No randomness."""

    def __init__(self, lengths: Sequence[int]):
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)
