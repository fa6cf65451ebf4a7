"""The kept evaluation: best metric, then lower validation loss, then later step (issue 32)."""

from __future__ import annotations

import pytest

from peftkit.selection import compare, describe
from peftkit.train_state import TrainState

CLS = {"accuracy": "max", "f1": "max", "loss": "min"}
LM = {"loss": "min", "perplexity": "min"}


@pytest.mark.parametrize(("current", "best", "expected"), [
    ({"accuracy": 0.9, "loss": 0.5}, None, (True, True)),  # the first evaluation
    ({"accuracy": 0.9, "loss": 0.5}, {"accuracy": 0.8, "loss": 0.1}, (True, True)),  # the metric decides first
    ({"accuracy": 0.7, "loss": 0.01}, {"accuracy": 0.8, "loss": 0.5}, (False, False)),
    ({"accuracy": 0.8, "loss": 0.4}, {"accuracy": 0.8, "loss": 0.5}, (True, True)),  # tie: lower loss wins
    ({"accuracy": 0.8, "loss": 0.6}, {"accuracy": 0.8, "loss": 0.5}, (False, False)),
    ({"accuracy": 0.8, "loss": 0.5}, {"accuracy": 0.8, "loss": 0.5}, (True, False)),  # full tie: later, no reset
    ({"accuracy": 0.8 + 1e-13, "loss": 0.5}, {"accuracy": 0.8, "loss": 0.5 + 1e-13}, (True, False)),  # float noise
])
def test_compare(current, best, expected):
    assert compare(CLS, "accuracy", current, best) == expected


def test_a_metric_where_lower_is_better_and_the_loss_itself():
    assert compare(LM, "loss", {"loss": 1.0}, {"loss": 1.1}) == (True, True)
    assert compare(LM, "loss", {"loss": 1.2}, {"loss": 1.1}) == (False, False)
    assert compare(LM, "loss", {"loss": 1.1}, {"loss": 1.1}) == (True, False)
    assert compare(LM, "perplexity", {"perplexity": 3.0, "loss": 1.0}, {"perplexity": 3.0, "loss": 1.2}) == (True, True)


def test_describe_says_why():
    history = [{"step": 5, "epoch": 1.0, "accuracy": 0.5, "loss": 0.9}, {"step": 10, "epoch": 2.0, "accuracy": 0.75,
                                                                          "loss": 0.4}]
    assert describe(history, "accuracy", 10) == {"step": 10, "epoch": 2.0, "metric": "accuracy", "value": 0.75,
                                                 "tied_steps": [], "reason": "the best validation accuracy (0.7500)"}
    assert describe(history[:1], "accuracy", 5)["reason"] == "the only evaluation"
    tied = [{"step": 5, "accuracy": 1.0, "loss": 0.3}, {"step": 10, "accuracy": 1.0, "loss": 0.3}]
    assert describe(tied, "accuracy", 10)["reason"] == "validation accuracy 1.0000 tied at steps 5, 10; the latest " \
                                                      "of them was kept"


def test_a_checkpoint_from_before_best_step_finds_its_kept_evaluation():
    # the old strict rule kept the first evaluation to reach the best value; another column's equal value
    # (recall 0.75 at step 20) is not the metric's
    saved = {"step": 40, "best": 0.75, "history": [{"step": 10, "epoch": 1.0, "accuracy": 0.75, "recall": 0.7},
                                                   {"step": 20, "epoch": 2.0, "accuracy": 0.5, "recall": 0.75},
                                                   {"step": 30, "epoch": 3.0, "accuracy": 0.75, "recall": 0.7}]}
    assert TrainState.from_json(saved, "accuracy").best_step == 10
    assert TrainState.from_json(saved, "recall").best_step == 20
    assert TrainState.from_json({**saved, "best": 0.9}, "accuracy").best_step is None


def test_many_ties_are_summed_up_in_one_short_reason():
    history = [{"step": s, "epoch": s // 2, "f1": 1.0, "loss": 1 / s} for s in range(2, 202, 2)]
    kept = describe(history, "f1", 200)
    assert kept["reason"] == ("validation f1 1.0000 tied at 100 evaluations (steps 2, 4, 6, ..., 198, 200); the "
                              "lowest validation loss (0.0050) broke the tie")
    assert len(kept["tied_steps"]) == 99  # results.json keeps them all
