"""The merge parity rule: float tolerance relative to the logits' scale, near-ties allowed to flip."""

from __future__ import annotations

import pytest
import torch

from peftkit.errors import PeftkitError
from peftkit.merge import check_parity


def report():
    return {"dtype": "float32"}


def test_lm_scale_logits_get_a_proportional_tolerance_and_near_ties_may_flip():
    ref = torch.tensor([[30.0, 10.0, 0.0], [5.0, 5.0 + 1e-5, 0.0]])
    other = ref.clone()
    other[0, 0] += 2e-3  # 2e-3 < 1e-4 x 30
    other[1, 0] += 2e-5  # the near-tie flips: row 2's argmax changes
    r = report()
    check_parity(r, ref, other, other)
    assert r["passed"] and r["tolerance"]["max_abs_logit_diff"] == pytest.approx(3e-3)
    assert r["adapter_vs_merged_reloaded"]["prediction_agreement"] == 0.5
    assert r["adapter_vs_merged_reloaded"]["decisive_agreement"] == 1.0


def test_a_decisive_flip_or_a_large_difference_fails():
    ref = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    with pytest.raises(PeftkitError, match="Parity check failed for float32"):
        check_parity(report(), ref, ref.flip(-1), ref.flip(-1))
    with pytest.raises(PeftkitError, match="allowed 0.0003"):
        check_parity(report(), ref, ref + 1e-3, ref + 1e-3)
