"""Length-grouped batching: a permutation, grouped per global batch, a function of the generator alone."""

import random

import torch

from peftkit.sampling import LengthGroupedSampler, real_token_share


def lengths(n=1003, seed=0):
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(3.3, 0.5))) for _ in range(n)]


def sampler(lens, global_batch=32, seed=42):
    return LengthGroupedSampler(lens, global_batch, torch.Generator().manual_seed(seed))


def test_each_epoch_visits_every_example_once_in_a_new_order():
    lens = lengths()
    s = sampler(lens)
    first, second = list(s), list(s)
    assert sorted(first) == sorted(second) == list(range(len(lens)))
    assert first != second  # the generator moves on between epochs


def test_order_is_a_function_of_the_generator_state_alone():
    lens = lengths()
    a, b = sampler(lens, seed=7), sampler(lens, seed=7)
    state = a.generator.get_state()
    epoch = list(a)
    assert list(b) == epoch
    a.generator.set_state(state)  # what the engine does when it resumes inside an epoch
    assert list(a) == epoch
    assert list(sampler(lens, seed=8)) != epoch


def test_batches_hold_similar_lengths_and_remove_most_padding():
    lens = lengths()
    s = sampler(lens)
    grouped = s.batches()
    order = torch.randperm(len(lens), generator=torch.Generator().manual_seed(1)).tolist()
    plain = [order[i:i + 32] for i in range(0, len(order), 32)]
    assert real_token_share(lens, grouped) > 0.9 > real_token_share(lens, plain) + 0.2
    # Groups are random draws, not a sort of the whole data: the first window's batches are not all the longest
    assert len({max(lens[i] for i in b) for b in grouped}) > 10


def test_longest_batch_first_short_batch_last():
    lens = lengths()
    batches = sampler(lens).batches()
    assert max(lens) in [lens[i] for i in batches[0]]
    assert [len(b) for b in batches] == [32] * (len(lens) // 32) + [len(lens) % 32]


def test_each_process_share_of_a_global_batch_is_grouped_too():
    """Two processes of batch 16 take alternate 16-example halves of the order (Accelerate's BatchSamplerShard):
    the 32-example global batches are the ones one process of batch 32 sees, and each half is short of padding."""
    lens = lengths(n=640)
    order = list(sampler(lens, global_batch=32))
    halves = [order[i:i + 16] for i in range(0, len(order), 16)]
    assert real_token_share(lens, halves) > 0.9


def test_evaluation_order_is_longest_first_stable_and_pads_less():
    from peftkit.sampling import LengthSortedSampler

    lens = lengths()
    order = list(LengthSortedSampler(lens))
    assert sorted(order) == list(range(len(lens)))
    assert all(lens[a] > lens[b] or (lens[a] == lens[b] and a < b) for a, b in zip(order, order[1:], strict=False))
    size = 64
    data_order = [list(range(i, min(i + size, len(lens)))) for i in range(0, len(lens), size)]
    sorted_batches = [order[i:i + size] for i in range(0, len(order), size)]
    assert real_token_share(lens, sorted_batches) > 0.85 > 0.5 > real_token_share(lens, data_order)
