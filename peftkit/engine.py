"""The one Accelerate training loop, shared by every task and strategy."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from peftkit.config import TrainingArguments
from peftkit.errors import PeftkitError, check
from peftkit.feature_cache import INDEX_KEY, FeatureCache, backbone_is_frozen

logger = logging.getLogger(__name__)
BEST_STATE = "best_trainable.safetensors"


@dataclass
class FitResult:
    eval: dict[str, float]
    test: dict[str, float] | None
    global_step: int
    epochs: float
    train_runtime_s: float
    train_samples: int
    history: list[dict] = field(default_factory=list)
    train_history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    feature_cache: bool = False
    step_time_median_s: float | None = None
    train_tokens: int = 0


def build_optimizer(model: torch.nn.Module, args: TrainingArguments, lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD over trainable parameters; no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    check(bool(decay or no_decay), "The strategy left no trainable parameters: nothing to train.")
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum)
    return torch.optim.AdamW(groups, lr=lr)


@torch.no_grad()
def evaluate(acc: Accelerator, task, model, loader: DataLoader, forward=None) -> dict[str, float]:
    """Task metrics over every example exactly once, however many processes share the work."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        out = forward(model, batch) if forward else model(**batch)
        lg, lb = acc.gather_for_metrics((out.logits.float(), batch["labels"]))
        logits.append(lg.cpu())
        labels.append(lb.cpu())
    model.train(was_training)
    return task.compute_metrics(torch.cat(logits), torch.cat(labels))


class Engine:
    """Trains ``model`` on ``data['train']``, selects on ``data['validation']``, reports ``data['test']``."""

    def __init__(self, accelerator: Accelerator, task, model, data: DatasetDict, collator,
                 args: TrainingArguments, lr: float, output_dir: Path, use_feature_cache: bool):
        self.acc, self.task, self.args, self.lr, self.output_dir = accelerator, task, args, lr, output_dir
        self.model, self.collator = model, collator
        self.cache = FeatureCache(model) if use_feature_cache and backbone_is_frozen(model) else None
        if self.cache is not None:
            data = DatasetDict({s: ds.add_column(INDEX_KEY, list(range(len(ds)))) for s, ds in data.items()})
        self.data = data
        # Names as in the unwrapped model's state dict, taken before Accelerate wraps or shards anything.
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.prepared = None
        self.greater_is_better = not args.metric_for_best_model.endswith("loss")

    def loader(self, ds: Dataset, train: bool) -> DataLoader:
        size = self.args.per_device_train_batch_size if train else self.args.per_device_eval_batch_size
        # An own seeded generator makes the data order a function of --seed alone: Accelerate shares it
        # across processes, so N processes see the global batches that one process would, and drawing
        # it does not move the global RNG that initialisation and dropout use.
        generator = torch.Generator().manual_seed(self.args.seed) if train else None
        return DataLoader(ds, batch_size=size, shuffle=train, collate_fn=self.collator, generator=generator)

    def _build_cache(self) -> None:
        device = self.acc.device
        self.model.to(device)
        for split, ds in self.data.items():
            self.cache.build(split, self.loader(ds, train=False), device, self.acc.is_local_main_process)
        self.cache.attach()

    def _forward(self, model, batch: dict, split: str):
        if self.cache is not None:
            self.cache.select(split, batch.pop(INDEX_KEY))
        return model(**batch)

    def evaluate(self, model, loader: DataLoader, split: str) -> dict[str, float]:
        return evaluate(self.acc, self.task, model, loader, lambda m, b: self._forward(m, b, split))

    def _is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best

    def _save_best(self, model) -> None:
        """Keep the trainable weights of the best evaluation on disk (written whole, then renamed).

        ``get_state_dict`` is collective: under FSDP and DeepSpeed ZeRO-3 it gathers the shards."""
        state = self.acc.get_state_dict(model)
        if self.acc.is_main_process:
            tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k in self.trainable}
            check(bool(tensors), "No trainable weights found in the gathered state dict; refusing to save an "
                  "empty checkpoint. Report this with your Accelerate config.")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.output_dir / (BEST_STATE + ".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, self.output_dir / BEST_STATE)
        self.acc.wait_for_everyone()

    def _restore_best(self, model) -> None:
        """Load the best weights on the main process and send them to the others, which need not share its
        disk (several machines)."""
        acc = self.acc
        best = load_file(str(self.output_dir / BEST_STATE)) if acc.is_main_process else {}
        if acc.distributed_type == DistributedType.FSDP:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, best, options=StateDictOptions(full_state_dict=True,
                                                                       broadcast_from_rank0=True, strict=False))
            return
        unwrapped = acc.unwrap_model(model)
        params = [p for n, p in unwrapped.named_parameters() if n in self.trainable]
        zero3 = acc.distributed_type == DistributedType.DEEPSPEED and any(hasattr(p, "ds_id") for p in params)
        gathered = nullcontext()
        if zero3:  # ZeRO-3 partitions parameters: gather, let rank 0 write, re-partition on exit
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
        with gathered:
            if acc.is_main_process:
                unwrapped.load_state_dict(best, strict=False)
            if acc.num_processes > 1 and not zero3:
                for param in params:
                    torch.distributed.broadcast(param.data, src=0)
        acc.wait_for_everyone()

    def save_model(self, tokenizer) -> None:
        """Write the trained model (adapter or weights) and tokenizer as a ``save_pretrained`` directory.

        Every process takes part in gathering the weights (FSDP, ZeRO-3); only the main one writes."""
        acc = self.acc
        state = acc.get_state_dict(self.prepared)
        unwrapped = acc.unwrap_model(self.prepared)
        unwrapped.save_pretrained(self.output_dir, is_main_process=acc.is_main_process, state_dict=state)
        if acc.is_main_process:
            tokenizer.save_pretrained(self.output_dir)
        acc.wait_for_everyone()

    def fit(self) -> FitResult:
        args, acc = self.args, self.acc
        start = time.perf_counter()
        if self.cache is not None:
            self._build_cache()
        train_loader = self.loader(self.data["train"], train=True)
        eval_loaders = {s: self.loader(self.data[s], train=False) for s in ("validation", "test") if s in self.data}
        optimizer = build_optimizer(self.model, args, self.lr)
        model, optimizer, train_loader, *prepared = acc.prepare(self.model, optimizer, train_loader,
                                                               *eval_loaders.values())
        eval_loaders = dict(zip(eval_loaders, prepared, strict=True))
        self.prepared = model
        steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        # The scheduler is stepped by hand once per real optimizer step, so it needs no scaling by the
        # number of processes (a classic off-by-N in Accelerate examples).
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                  num_warmup_steps=math.ceil(args.warmup_ratio * total), num_training_steps=total)
        logger.info("%d optimizer steps (%d per epoch), effective batch %d", total, steps_per_epoch,
                    args.per_device_train_batch_size * acc.num_processes * args.gradient_accumulation_steps)
        state = {"step": 0, "best": None, "bad_evals": 0, "samples": 0, "history": [], "train_history": [],
                 "stop": False,
                 "step_times": [], "last": time.perf_counter(), "tokens": 0}
        bar = tqdm(total=total, desc="Training", disable=not acc.is_local_main_process)
        epoch = 0
        while state["step"] < total and not state["stop"]:
            self._train_epoch(model, optimizer, scheduler, train_loader, eval_loaders, total, state, bar, epoch)
            if not state["history"] or state["history"][-1]["step"] != state["step"]:
                self._evaluate_and_select(model, eval_loaders, state, epoch + 1)
            epoch += 1
        bar.close()
        runtime = time.perf_counter() - start
        return self._finish(model, eval_loaders, state, runtime, epoch)

    def _train_epoch(self, model, optimizer, scheduler, loader, eval_loaders, total, state, bar, epoch) -> None:
        args, acc = self.args, self.acc
        model.train()
        for batch in loader:
            with acc.accumulate(model):
                state["samples"] += len(batch["labels"]) * acc.num_processes
                if "attention_mask" in batch:  # real (non-padding) tokens, for throughput in tokens/s
                    state["tokens"] += int(batch["attention_mask"].sum()) * acc.num_processes
                loss = self._forward(model, batch, "train").loss
                if not torch.isfinite(loss):
                    raise PeftkitError(
                        f"The training loss became {loss.item()} at step {state['step'] + 1}. Likely causes: a "
                        "learning rate too high for this strategy, fp16 overflow, or broken inputs. Lower "
                        "--learning_rate, or try --mixed_precision bf16/no.")
                acc.backward(loss)
                if acc.sync_gradients and args.max_grad_norm > 0:
                    acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not acc.sync_gradients:
                continue
            scheduler.step()
            now = time.perf_counter()
            state["step_times"].append(now - state["last"])  # one optimizer step, all its micro-batches
            state["last"] = now
            state["step"] += 1
            bar.update(1)
            if state["step"] % args.logging_steps == 0 or state["step"] == total:
                mean_loss = acc.gather(loss.detach()).mean().item()
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                lr = scheduler.get_last_lr()[0]
                state["train_history"].append({"step": state["step"], "loss": mean_loss, "learning_rate": lr})
                acc.log({"train/loss": mean_loss, "train/lr": lr}, step=state["step"])
            if args.eval_steps and state["step"] % args.eval_steps == 0:
                self._evaluate_and_select(model, eval_loaders, state, epoch + state["step"] / total)
            if state["step"] >= total or state["stop"]:
                return

    def _evaluate_and_select(self, model, eval_loaders, state, epoch: float) -> None:
        try:
            self._select(model, eval_loaders, state, epoch)
        finally:
            state["last"] = time.perf_counter()  # evaluation time is not step time

    def _select(self, model, eval_loaders, state, epoch: float) -> None:
        metrics = self.evaluate(model, eval_loaders["validation"], "validation")
        name = self.args.metric_for_best_model
        check(name in metrics, f"--metric_for_best_model {name!r} is not a validation metric. "
              f"Choose one of: {', '.join(metrics)}.")
        state["history"].append({"step": state["step"], "epoch": round(epoch, 3), **metrics})
        self.acc.log({f"eval/{k}": v for k, v in metrics.items()}, step=state["step"])
        logger.info("step %d: %s", state["step"], {k: round(v, 4) for k, v in metrics.items()})
        if self._is_better(metrics[name], state["best"]):
            state["best"], state["bad_evals"] = metrics[name], 0
            self._save_best(model)
        else:
            state["bad_evals"] += 1
            patience = self.args.early_stopping_patience
            if patience and state["bad_evals"] >= patience:
                logger.info("Early stopping: no %s improvement in %d evaluations.", name, patience)
                state["stop"] = True

    def _finish(self, model, eval_loaders, state, runtime: float, epochs: int) -> FitResult:
        best_path = self.output_dir / BEST_STATE
        self._restore_best(model)
        results = {split: self.evaluate(model, loader, split) for split, loader in eval_loaders.items()}
        if self.cache is not None:
            self.cache.detach()
        if self.acc.is_main_process:
            best_path.unlink(missing_ok=True)
        return FitResult(eval=results["validation"], test=results.get("test"), global_step=state["step"],
                         epochs=epochs, train_runtime_s=runtime, train_samples=state["samples"],
                         history=state["history"], train_history=state["train_history"], stopped_early=state["stop"],
                         feature_cache=self.cache is not None,
                         train_tokens=state["tokens"],
                         step_time_median_s=statistics.median(state["step_times"]) if state["step_times"] else None)
