"""The Accelerate loop: gradient accumulation, best-checkpoint selection, early stopping, NaN loss."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset, DatasetDict
from helpers import build, collate, examples

from peftkit.config import TrainingArguments
from peftkit.engine import Engine
from peftkit.errors import PeftkitError
from peftkit.modeling import disable_dropout, unfreeze_schedule
from peftkit.tasks.text_cls import TextClassification


def data(n=16):
    rows = [{k: v for k, v in r.items() if k != "feature_idx"} for r in examples(n)]
    return DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:6])})


def engine(tiny_model_dir, tmp_path, strategy="full", unfreeze=False, lr=1e-3, should_stop=None, **overrides):
    model, task, _ = build("bert", strategy, tiny_model_dir)
    disable_dropout(model)  # runs can then be compared exactly
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **overrides)
    acc = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
    return Engine(acc, task, model, data(), collate, args, lr=lr, output_dir=tmp_path, use_feature_cache=False,
                  unfreeze=unfreeze_schedule(model) if unfreeze else None, should_stop=should_stop)


def test_gradient_accumulation_matches_the_larger_batch(tiny_model_dir, tmp_path):
    # SGD, not Adam: Adam's normalised update turns float noise in near-zero gradients into full-size steps.
    common = dict(max_steps=2, warmup_ratio=0.0, optimizer="sgd", momentum=0.0)
    torch.manual_seed(0)
    big = engine(tiny_model_dir, tmp_path / "a", per_device_train_batch_size=8, **common)
    big.fit()
    torch.manual_seed(0)
    small = engine(tiny_model_dir, tmp_path / "b", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                   **common)
    fit = small.fit()
    assert fit.global_step == 2
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_best_checkpoint_is_kept_and_early_stopping_stops(tiny_model_dir, tmp_path, monkeypatch):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, num_train_epochs=10,
                 eval_steps=1, early_stopping_patience=2)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best at the 2nd evaluation; two worse ones then stop
    snapshots = []
    real = eng.evaluate

    def scripted(model, loader, split):
        metrics = real(model, loader, split)
        if len(snapshots) < 4:
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
            metrics["accuracy"] = next(scores)
        return metrics

    monkeypatch.setattr(eng, "evaluate", scripted)
    fit = eng.fit()
    assert fit.stopped_early and fit.global_step == 4
    assert [h["accuracy"] for h in fit.history] == [0.5, 0.7, 0.6, 0.65]
    for name, param in eng.model.named_parameters():
        torch.testing.assert_close(param, snapshots[1][name], msg=name)  # the weights of the best evaluation
    assert not (tmp_path / "best_trainable.safetensors").exists()


def scripted_evaluations(eng, rows, monkeypatch):
    """Make the first ``len(rows)`` validation evaluations report ``rows``' metrics; snapshot the weights at each."""
    snapshots, real, rows = [], eng.evaluate, list(rows)

    def scripted(model, loader, split):
        metrics = real(model, loader, split)
        if split == "validation" and len(snapshots) < len(rows):
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
            metrics |= rows[len(snapshots) - 1]
        return metrics

    monkeypatch.setattr(eng, "evaluate", scripted)
    return snapshots


def test_a_tie_on_the_metric_keeps_the_later_lower_loss_weights(tiny_model_dir, tmp_path, monkeypatch):
    # A small validation set at accuracy 1.0 from the first epoch on, while the loss still falls: the weights of
    # the last epoch are kept, not the first, undertrained ones (issue 32).
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=8, num_train_epochs=4)
    snapshots = scripted_evaluations(eng, [{"accuracy": 0.5, "loss": 0.9}, {"accuracy": 1.0, "loss": 0.649},
                                           {"accuracy": 1.0, "loss": 0.101}, {"accuracy": 1.0, "loss": 0.065}],
                                     monkeypatch)
    fit = eng.fit()
    assert [h["step"] for h in fit.history] == [2, 4, 6, 8]
    for name, param in eng.model.named_parameters():
        torch.testing.assert_close(param, snapshots[3][name], msg=name)
    assert fit.selection["step"] == 8 and fit.selection["epoch"] == 4 and fit.selection["tied_steps"] == [4, 6]
    assert fit.selection["reason"] == ("validation accuracy 1.0000 tied at steps 4, 6, 8; the lowest validation "
                                       "loss (0.0650) broke the tie")


def test_a_tie_with_a_higher_loss_keeps_the_earlier_weights_and_counts_for_patience(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=8, num_train_epochs=6,
                 early_stopping_patience=2)
    snapshots = scripted_evaluations(eng, [{"accuracy": 1.0, "loss": 0.2}, {"accuracy": 1.0, "loss": 0.3},
                                           {"accuracy": 1.0, "loss": 0.4}], monkeypatch)
    fit = eng.fit()
    assert fit.stopped_early and [h["step"] for h in fit.history] == [2, 4, 6]
    for name, param in eng.model.named_parameters():
        torch.testing.assert_close(param, snapshots[0][name], msg=name)
    assert fit.selection["step"] == 2 and "the lowest validation loss (0.2000) broke the tie" in fit.selection["reason"]


def test_nan_loss_stops_with_the_step(tiny_model_dir, tmp_path):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=3)
    with torch.no_grad():
        eng.model.classifier.weight.fill_(float("nan"))
    with pytest.raises(PeftkitError, match=r"loss or its gradients became NaN/inf at step 1 \(loss nan\)"):
        eng.fit()


def test_a_rate_beyond_floats_is_named_not_a_traceback(tiny_model_dir, tmp_path):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=2, lr=1e38)
    with pytest.raises(PeftkitError, match=r"optimizer step \d+ overflowed.*--learning_rate 1e\+38"):
        eng.fit()


def test_a_search_pruner_stops_the_run_at_an_evaluation(tiny_model_dir, tmp_path):
    asked = []

    def prune_at_two(step, metrics):
        asked.append((step, sorted(metrics)))
        return step == 2

    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=8, eval_steps=1,
                 should_stop=prune_at_two)
    fit = eng.fit()
    assert fit.pruned_at_step == 2 and fit.global_step == 2 and fit.stopped_early
    assert [step for step, _ in asked] == [1, 2] and "accuracy" in asked[0][1]


def nan_at(eng, bad_steps):
    """Make the training loss NaN at the given (1-based) optimizer steps, leaving the others untouched."""
    real, calls = eng._forward, {"n": 0}

    def forward(model, batch, split):
        out = real(model, batch, split)
        if split == "train":
            calls["n"] += 1
            if calls["n"] in bad_steps:
                out.loss = out.loss * float("nan")
        return out

    eng._forward = forward


def test_nan_steps_are_skipped_by_flag_and_leave_the_weights_alone(tiny_model_dir, tmp_path):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=3, on_nonfinite="skip",
                 optimizer="sgd", momentum=0.0, warmup_ratio=0.0, lr_scheduler_type="constant")
    nan_at(eng, {2})
    seen = []
    real_step = eng._after_step

    def after_step(loss):
        seen.append({n: p.detach().clone() for n, p in eng.model.named_parameters() if p.requires_grad})
        return real_step(loss)

    eng._after_step = after_step
    fit = eng.fit()
    assert fit.skipped_steps == 1 and fit.global_step == 3
    for name, before in seen[0].items():  # step 2 was skipped: its weights are step 1's
        assert torch.equal(seen[1][name], before), name
    assert any(not torch.equal(seen[2][n], seen[1][n]) for n in seen[1])  # step 3 trained again


def test_skipping_gives_up_after_ten_in_a_row_and_names_the_last_checkpoint(tiny_model_dir, tmp_path):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=20, on_nonfinite="skip",
                 save_steps=2)
    nan_at(eng, set(range(3, 30)))
    with pytest.raises(PeftkitError, match="10 steps in a row were skipped") as info:
        eng.fit()
    assert "The newest checkpoint is" in str(info.value) and str(info.value).endswith("checkpoint-12.")


def test_a_nan_right_after_resuming_names_that_checkpoint_as_the_suspect(tiny_model_dir, tmp_path):
    """It was called 'the last good checkpoint' although the damage came from it."""
    from peftkit import checkpoint

    engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=8, save_steps=2,
           save_total_limit=0).fit()
    resumed = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=4, max_steps=12, save_steps=2)
    nan_at(resumed, {1})
    with pytest.raises(PeftkitError, match="became NaN/inf at step 9") as info:
        resumed.fit(tmp_path / "checkpoint-8")
    assert "This run resumed from step 8 1 step(s) before: that checkpoint is the first suspect" in str(info.value)
    assert "resume from an earlier one (" in str(info.value) and "checkpoint-6)" in str(info.value)
    assert "last good" not in str(info.value)
    assert checkpoint.list_checkpoints(tmp_path)


def test_metric_for_best_model_must_exist(tiny_model_dir, tmp_path):
    eng = engine(tiny_model_dir, tmp_path, per_device_train_batch_size=8, max_steps=1,
                 metric_for_best_model="auc")
    with pytest.raises(PeftkitError, match="'auc' is not a validation metric. Choose one of: loss, accuracy"):
        eng.fit()


def test_metrics_are_computed_over_all_examples():
    from types import SimpleNamespace

    task = TextClassification()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    rows = task.eval_rows(SimpleNamespace(logits=logits), {"labels": torch.tensor([0, 1, 1, 1])})
    metrics = task.compute_metrics(rows)
    assert metrics["accuracy"] == 0.5
    # class 0: precision 1/3, recall 1, F1 1/2; class 1: precision 1, recall 1/3, F1 1/2
    assert metrics["precision"] == pytest.approx((1 / 3 + 1) / 2)
    assert metrics["recall"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["f1"] == pytest.approx(0.5)
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 1])).item()
    assert metrics["loss"] == pytest.approx(expected_loss)


def test_warmup_steps_override_the_ratio_and_workers_collate_the_same_batches(tiny_model_dir, tmp_path):
    common = dict(per_device_train_batch_size=4, max_steps=8, logging_steps=1)
    torch.manual_seed(0)
    fit = engine(tiny_model_dir, tmp_path / "a", warmup_steps=4, **common).fit()
    lrs = [round(h["learning_rate"] / 1e-3, 6) for h in fit.train_history]
    assert lrs == [0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25, 0.0]  # 4 warm-up steps, then linear decay
    torch.manual_seed(0)
    workers = engine(tiny_model_dir, tmp_path / "b", warmup_steps=4, dataloader_num_workers=1, **common).fit()
    assert [h["loss"] for h in workers.train_history] == [h["loss"] for h in fit.train_history]


def test_length_grouping_computes_less_padding_for_the_same_examples(tiny_model_dir, tmp_path):
    common = dict(per_device_train_batch_size=4, num_train_epochs=1, save_steps=-1)
    torch.manual_seed(0)
    grouped = engine(tiny_model_dir, tmp_path / "a", **common).fit()  # on by default
    torch.manual_seed(0)
    plain = engine(tiny_model_dir, tmp_path / "b", group_by_length=False, **common).fit()
    assert grouped.train_tokens == plain.train_tokens and grouped.train_samples == plain.train_samples == 16
    assert grouped.train_positions < 0.85 * plain.train_positions


def test_time_breakdown_accounts_for_the_training_time(tiny_model_dir, tmp_path):
    fit = engine(tiny_model_dir, tmp_path, strategy="lora", per_device_train_batch_size=4, num_train_epochs=2,
                 save_steps=1).fit()
    phases = fit.time_breakdown_s
    assert {"data", "forward", "backward", "optimizer", "evaluation", "checkpoint", "other"} <= set(phases)
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["forward"] > 0 and phases["backward"] > 0 and phases["checkpoint"] > 0
    # the clock covers the loop: what no phase claims (progress bar, logging) is a small part of the time
    assert phases["other"] < 0.3 * fit.train_runtime_s


# -- optimizers and schedules ---------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "rmsprop"])
def test_every_optimizer_moves_the_trainable_tensors_only(optimizer, tiny_model_dir, tmp_path):
    eng = engine(tiny_model_dir, tmp_path, strategy="lora", optimizer=optimizer, max_steps=2, save_steps=-1,
                 per_device_train_batch_size=4)
    before = {n: p.detach().cpu().clone() for n, p in eng.model.named_parameters()}
    eng.fit(None)
    after = dict(eng.acc.unwrap_model(eng.prepared).named_parameters())
    for name, old in before.items():
        moved = not torch.equal(old, after[name].detach().cpu())  # trained on the GPU if there is one
        assert moved == after[name].requires_grad, name


def test_adam_is_l2_in_the_gradient_and_adamw_decays_the_weights(tiny_model_dir):
    from peftkit.engine import build_optimizer

    model, _, _ = build("bert", "full", tiny_model_dir)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)):
        opt = build_optimizer(model, TrainingArguments(optimizer=name, weight_decay=0.05), 1e-3)
        assert type(opt) is cls and [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_step_schedule_drops_every_lr_step_size_epochs_and_survives_a_checkpoint():
    from peftkit.engine import build_scheduler

    def run(args, steps, state=None):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, args, total=100, steps_per_epoch=10)
        if state is not None:
            sched.load_state_dict(state)
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs, sched.state_dict()

    args = TrainingArguments(lr_scheduler_type="step", lr_step_size=2, lr_gamma=0.5, warmup_ratio=0.0)
    lrs, _ = run(args, 60)
    assert lrs[0] == lrs[19] == 1.0 and lrs[20] == lrs[39] == 0.5 and lrs[40] == 0.25  # epochs 2 and 4
    first, state = run(args, 25)
    rest, _ = run(args, 35, state)
    # A restored schedule goes on where it stopped (its first value is the fresh optimizer's, which a real
    # resume replaces with the checkpoint's optimizer state).
    assert first == lrs[:25] and rest[1:] == lrs[26:60]
    warm, _ = run(TrainingArguments(lr_scheduler_type="step", lr_step_size=2, warmup_steps=4), 6)
    assert warm[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_gradual_unfreezing_trains_each_layer_from_its_step_on_and_resumes_exactly(tiny_model_dir, tmp_path):
    # 6 steps; 2 layers + embeddings join at steps ceil(6/6)=1, ceil(12/6)=2 and 3 (half-way)
    common = dict(per_device_train_batch_size=4, num_train_epochs=1.5, warmup_ratio=0.0, save_steps=1)
    eng = engine(tiny_model_dir, tmp_path / "a", unfreeze=True, max_steps=1, **common)
    before = {n: p.detach().cpu().clone() for n, p in eng.model.named_parameters()}
    eng.fit()
    after = dict(eng.model.named_parameters())
    moved = {n for n, old in before.items() if not torch.equal(old, after[n].detach().cpu())}
    assert "classifier.weight" in moved and "bert.pooler.dense.weight" in moved
    assert not any(n.startswith(("bert.encoder", "bert.embeddings")) for n in moved)  # all still waiting
    # A straight run, and the same run resumed from its checkpoint after step 2: the same weights at the end
    torch.manual_seed(0)
    straight = engine(tiny_model_dir, tmp_path / "b", unfreeze=True, save_total_limit=0, **common)
    straight.fit()
    assert straight.state.step == 6
    end = dict(straight.model.named_parameters())
    assert all(not torch.equal(before[n], end[n].detach().cpu()) for n in before)  # everything trained in the end
    torch.manual_seed(0)
    resumed = engine(tiny_model_dir, tmp_path / "c", unfreeze=True, **common)
    resumed.fit(tmp_path / "b" / "checkpoint-2")
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, end[name], rtol=0, atol=0, msg=name)


def test_evaluation_in_length_order_gives_the_metrics_of_data_order(tiny_model_dir):
    from torch.utils.data import DataLoader

    from peftkit.evaluation import eval_loader, evaluate

    model, task, _ = build("bert", "full", tiny_model_dir)
    rows = [{k: v for k, v in r.items() if k != "feature_idx"} for r in examples(40, seed=3)]
    ds = Dataset.from_list(rows)
    acc = Accelerator()
    sorted_loader = eval_loader(ds, 8, collate)
    assert [len(ds[i]["input_ids"]) for i in sorted_loader.sampler] == sorted(
        (len(r["input_ids"]) for r in rows), reverse=True)
    in_order = evaluate(acc, task, model, DataLoader(ds, batch_size=8, collate_fn=collate))
    by_length = evaluate(acc, task, model, sorted_loader)
    assert by_length.keys() == in_order.keys()
    for key, value in in_order.items():
        assert by_length[key] == pytest.approx(value, abs=1e-6), key
