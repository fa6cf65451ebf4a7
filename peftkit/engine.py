"""The one Accelerate training loop, shared by every task and strategy."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from peftkit import checkpoint
from peftkit.config import DEFAULT_EPOCHS, TrainingArguments
from peftkit.distributed import any_process, gather_trainable, on_main, restore_trainable, sharded, sum_processes
from peftkit.errors import PeftkitError, check, is_write_failure, write_failure
from peftkit.evaluation import eval_loader, evaluate, own_generator
from peftkit.feature_cache import INDEX_KEY, FeatureCache, backbone_is_frozen
from peftkit.interrupt import StopRequest, TrainingInterrupted
from peftkit.losses import build_loss
from peftkit.memory import HOST
from peftkit.sampling import LENGTH_KEY, LengthGroupedSampler, real_token_share
from peftkit.selection import compare, describe
from peftkit.train_state import BestWeights, TrainState

logger = logging.getLogger(__name__)
EPOCH_CHECKPOINTS = 10  # at most about this many epoch-end checkpoints per run
MAX_SKIP_STREAK = 10
IGNORE_INDEX = -100  # the label transformers' losses skip


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
    pruned_at_step: int | None = None  # stopped by peftkit search's pruner
    selection: dict | None = None  # the evaluation whose weights were kept, and why (selection.describe)
    feature_cache: bool = False
    skipped_steps: int = 0
    resumed_from_step: int | None = None
    step_time_median_s: float | None = None
    train_tokens: int = 0
    train_positions: int = 0
    time_breakdown_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Loop:
    """One run's loop: what :meth:`Engine.fit` builds in one place (:meth:`Engine._start`) and the steps share."""

    started: float  # perf_counter at the start of this process's training
    generator: torch.Generator  # the data order's only source of randomness
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches_per_epoch: int
    total: int  # optimizer steps of the whole run
    checkpoint_every_epochs: int
    checkpoints: bool  # whether this run writes checkpoints (not under FSDP/DeepSpeed yet)
    waiting: list  # gradual unfreezing: (step, parameters that start to train then), in order
    epoch_start_rng: torch.Tensor  # the data generator's state at the start of the current epoch
    rng: dict | None = None  # the checkpoint being resumed, until its first epoch has started
    runtime_before: float = 0.0  # training seconds of the runs this one resumes
    timing: dict = field(default_factory=dict)
    bar: tqdm | None = None
    stop: StopRequest | None = None


class PhaseClock:
    """Seconds of training spent in each phase, summed over the run: where a step's time goes.

    Host-side wall time. On a CPU that is the work itself; on a GPU kernels run asynchronously, so their time
    lands in the phase where the host next waits for them (the loss check closes each backward pass)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start

    def iterate(self, items, phase: str):
        """``items``, with the time spent waiting for each one counted as ``phase``."""
        items = iter(items)
        while True:
            with self(phase):
                item = next(items, _END)
            if item is _END:
                return
            yield item


_END = object()


def build_optimizer(model: torch.nn.Module, args: TrainingArguments, lr: float,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The --optimizer over trainable parameters; no weight decay on biases and norm weights; ``lr_scales``
    multiplies the learning rate of the named parameters (LoRA+). AdamW decays the weights directly; adam,
    sgd and rmsprop add weight decay to the gradient (L2)."""
    lr_scales = lr_scales or {}
    grouped: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}  # the layout without scales
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "norm" in name.lower())
            grouped.setdefault((decays, lr_scales.get(name, 1.0)), []).append(param)
    check(any(grouped.values()), "The strategy left no trainable parameters: nothing to train.")
    # Insertion order: the same groups in the same order on every run with the same flags (checkpoints)
    groups = [{"params": params, "weight_decay": args.weight_decay if decays else 0.0, "lr": lr * scale}
              for (decays, scale), params in grouped.items()]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=args.momentum)
    if args.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=args.momentum)
    return (torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW)(groups, lr=lr)


def _step_factor(step: int, warmup: int, every: int, gamma: float) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return gamma ** (step // every)


def build_scheduler(optimizer, args: TrainingArguments, total: int, steps_per_epoch: int):
    """Warm-up, then the --lr_scheduler_type; stepped once per optimizer step."""
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total)
    if args.lr_scheduler_type == "step":
        every = max(1, round(args.lr_step_size * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(_step_factor, warmup=warmup, every=every, gamma=args.lr_gamma))
    return get_scheduler(args.lr_scheduler_type, optimizer, num_training_steps=total, num_warmup_steps=warmup)


class Engine:
    """Trains ``model`` on ``data['train']``, selects on ``data['validation']``, reports ``data['test']``.

    Read top to bottom: :meth:`fit` prepares, then loops over epochs (:meth:`_train_epoch`), each a sequence of
    optimizer steps (:meth:`_optimizer_step` over --gradient_accumulation_steps micro-batches), each followed
    by logging, evaluation and checkpointing (:meth:`_after_step`). Progress lives in ``self.state``.
    """

    def __init__(self, accelerator: Accelerator, task, model, data: DatasetDict, collator,
                 args: TrainingArguments, lr: float, output_dir: Path, use_feature_cache: bool,
                 lr_scales: dict[str, float] | None = None, unfreeze: dict[str, float] | None = None,
                 should_stop: Callable[[int, dict[str, float]], bool] | None = None):
        self.acc, self.task, self.args, self.lr, self.output_dir = accelerator, task, args, lr, output_dir
        self.lr_scales = lr_scales
        # Asked after each validation evaluation, on the main process (peftkit search prunes hopeless trials)
        self.should_stop, self.pruned_at_step = should_stop, None
        # Gradual unfreezing: parameter name -> fraction of the run's steps after which it starts to train.
        self.unfreeze = {n: f for n, f in (unfreeze or {}).items() if f > 0}
        self.model, self.collator = model, collator
        self.cache = FeatureCache(model) if use_feature_cache and backbone_is_frozen(model) else None
        if self.cache is not None:
            data = DatasetDict({s: ds.add_column(INDEX_KEY, list(range(len(ds)))) for s, ds in data.items()})
        self.data = data
        # Names as in the unwrapped model's state dict, taken before Accelerate wraps or shards anything.
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.loss_fn = build_loss(args, task, data["train"])  # None: the model's own loss
        self.prepared = None
        self.skip_streak = 0
        self.metric = args.metric_for_best_model or task.default_metric
        self.best_weights = BestWeights(output_dir)
        self.state = TrainState()
        self.loop: Loop | None = None  # built by fit() (_start), one per run
        self.clock = PhaseClock()

    def loader(self, ds: Dataset, train: bool) -> DataLoader:
        size = self.args.per_device_train_batch_size if train else self.args.per_device_eval_batch_size
        # An own seeded generator makes the data order a function of --seed alone: Accelerate shares it
        # across processes, so N processes see the global batches that one process would, and drawing
        # it does not move the global RNG that initialisation and dropout use.
        generator = torch.Generator().manual_seed(self.args.seed) if train else own_generator()
        if train and self.args.group_by_length and LENGTH_KEY in ds.column_names:
            # Grouped per optimizer step (every process, every accumulated micro-batch), so that N processes and
            # accumulation train on the same examples per step as one process with the whole batch would.
            step = size * self.acc.num_processes * self.args.gradient_accumulation_steps
            sampler = LengthGroupedSampler([len(ids) for ids in ds[LENGTH_KEY]], step, generator)
            self._log_grouping(sampler)
            # The loader draws its workers' base seed from ``generator`` too, as with shuffle=True, rather than
            # from the global RNG that dropout uses (resuming restores that one after the iterator starts).
            return DataLoader(ds, batch_size=size, sampler=sampler, collate_fn=self.collator, generator=generator,
                              num_workers=self.args.dataloader_num_workers)
        return DataLoader(ds, batch_size=size, shuffle=train, collate_fn=self.collator, generator=generator,
                          num_workers=self.args.dataloader_num_workers)

    @staticmethod
    def _log_grouping(sampler: LengthGroupedSampler) -> None:
        """Say what length grouping saves on this data, from a throwaway generator (the run's stays untouched)."""
        probe = LengthGroupedSampler(sampler.lengths, sampler.global_batch, torch.Generator().manual_seed(0))
        size = probe.global_batch
        shuffled = torch.randperm(len(probe), generator=probe.generator).tolist()
        plain = [shuffled[i:i + size] for i in range(0, len(shuffled), size)]
        logger.info("Length-grouped batches: %.0f%% of the tokens computed are real (random batches of this data: "
                    "%.0f%%). --group_by_length false for random batches.",
                    100 * real_token_share(probe.lengths, probe.batches()),
                    100 * real_token_share(probe.lengths, plain))

    def _build_cache(self) -> None:
        """Run the frozen backbone once per split. Under N processes each computes a contiguous 1/N of every
        split and all exchange their parts, so the cost is divided, and every process holds the whole cache
        (its training batches may come from anywhere in the data)."""
        acc, device = self.acc, self.acc.device
        self.model.to(device)
        for split, ds in self.data.items():
            shard = acc.num_processes > 1 and len(ds) >= acc.num_processes
            part = ds.shard(acc.num_processes, acc.process_index, contiguous=True) if shard else ds
            self.cache.build(split, self.loader(part, train=False), device, acc.is_local_main_process)
            if shard:  # rank order is data order: the parts concatenate back into the split
                self.cache.stub.store[split] = gather_object(self.cache.stub.store[split])
        self.cache.attach()

    def _forward(self, model, batch: dict, split: str):
        if self.cache is not None:
            self.cache.select(split, batch.pop(INDEX_KEY))
        return self.task.forward(model, batch)

    def evaluate(self, model, loader: DataLoader, split: str) -> dict[str, float]:
        return evaluate(self.acc, self.task, model, loader, lambda m, b: self._forward(m, b, split))

    def _save_best(self) -> None:
        """Keep the trainable weights of the best evaluation on disk (written whole, then renamed)."""
        tensors = gather_trainable(self.acc, self.prepared, self.trainable)
        if self.acc.is_main_process:
            check(bool(tensors), "No trainable weights in the gathered state dict; refusing to save an empty "
                  "checkpoint. Report this with your Accelerate config.")
            try:
                self.best_weights.save(tensors)
            except Exception as exc:  # noqa: BLE001 - a full disk, however the writer reports it
                if not is_write_failure(exc):
                    raise
                earlier = checkpoint.list_checkpoints(self.output_dir)
                raise write_failure(exc, self.output_dir, "the best evaluation's weights",
                                    "The previous best weights are intact (written whole or not at all)"
                                    + (f", and so is {earlier[-1].name}: add --resume_from_checkpoint latest."
                                       if earlier else ".")) from exc
        self.acc.wait_for_everyone()

    def fit(self, resume: Path | None = None) -> FitResult:
        """Train to the end (or an early stop, a prune, a signal); the best evaluation's weights are put back."""
        loop = self._start(resume)
        state = self.state
        with StopRequest() as loop.stop:
            while state.step < loop.total and not state.stop:
                self._train_epoch(loop.rng)
                loop.rng = None
                if state.batches_in_epoch < loop.batches_per_epoch:
                    break  # stopped inside the epoch: --max_steps or early stopping
                if (state.epoch + 1) % (self.args.eval_every_epochs or 1) == 0:
                    self._evaluate_and_select()
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                loop.epoch_start_rng = loop.generator.get_state()
                if state.step < loop.total and not state.stop and state.epoch % loop.checkpoint_every_epochs == 0:
                    self._checkpoint()
            self._evaluate_and_select()
        loop.bar.close()
        return self._finish(loop.runtime_before + time.perf_counter() - loop.started)

    def _start(self, resume: Path | None) -> Loop:
        """Everything one run's loop needs, built in one place: loaders, optimizer and schedule (through
        Accelerate), the step count, the checkpoint plan, and the state (restored from ``resume``)."""
        args, acc = self.args, self.acc
        started = time.perf_counter()
        if self.cache is not None:
            with self.clock("feature cache"):
                self._build_cache()
        train_loader = self.loader(self.data["train"], train=True)
        generator = train_loader.generator  # the data order's only source of randomness (its sampler's too)
        eval_loaders = {s: eval_loader(self.data[s], args.per_device_eval_batch_size, self.collator,
                                       args.dataloader_num_workers) for s in ("validation", "test") if s in self.data}
        optimizer = build_optimizer(self.model, args, self.lr, self.lr_scales)
        model, optimizer, train_loader, *prepared = acc.prepare(self.model, optimizer, train_loader,
                                                                *eval_loaders.values())
        self.prepared = model
        batches_per_epoch = len(train_loader)
        steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        epochs = args.num_train_epochs or DEFAULT_EPOCHS  # the runner derives it; an Engine built by hand may not
        total = args.max_steps if args.max_steps > 0 else math.ceil(epochs * steps_per_epoch)
        # The scheduler is stepped by hand once per real optimizer step, so it needs no scaling by the
        # number of processes (a classic off-by-N in Accelerate examples).
        scheduler = build_scheduler(optimizer, args, total, steps_per_epoch)
        logger.info("%d optimizer steps (%d per epoch), effective batch %d", total, steps_per_epoch,
                    args.per_device_train_batch_size * acc.num_processes * args.gradient_accumulation_steps)
        waiting: list[tuple[int, list[torch.nn.Parameter]]] = []
        if self.unfreeze:
            check(not sharded(acc), "Gradual unfreezing is not supported under FSDP or DeepSpeed: drop "
                  "--gradual_unfreezing or train with DDP.")
            params, joins = dict(self.model.named_parameters()), {}
            for name, fraction in self.unfreeze.items():
                joins.setdefault(math.ceil(fraction * total), []).append(params[name])
            waiting = sorted(joins.items(), key=lambda item: item[0])
            logger.info("Gradual unfreezing: %d parameter groups join at steps %s (the head and the top train from "
                        "the start).", len(joins), ", ".join(str(step) for step in joins))
        checkpoints = args.save_steps >= 0 and not sharded(acc)
        if args.save_steps >= 0 and sharded(acc):
            logger.warning("Checkpoints and --resume_from_checkpoint are not supported under FSDP or DeepSpeed yet: "
                           "this run writes none.")
        self.state = TrainState()
        self.loop = loop = Loop(
            started=started, generator=generator, train_loader=train_loader,
            eval_loaders=dict(zip(eval_loaders, prepared, strict=True)), optimizer=optimizer, scheduler=scheduler,
            batches_per_epoch=batches_per_epoch, total=total,
            # A checkpoint at every epoch end, or every k-th where a run has more than EPOCH_CHECKPOINTS epochs:
            # tiny data trains up to 100 short epochs, and each checkpoint writes the whole training state.
            checkpoint_every_epochs=max(1, math.ceil(math.ceil(total / steps_per_epoch) / EPOCH_CHECKPOINTS)),
            checkpoints=checkpoints, waiting=waiting, epoch_start_rng=generator.get_state())
        loop.rng = self._resume(resume) if resume else None
        loop.runtime_before = self.state.train_runtime_s
        loop.timing = {"step_times": [], "last": time.perf_counter()}
        loop.bar = tqdm(total=total, initial=self.state.step, desc="Training", disable=not acc.is_local_main_process)
        return loop

    def _resume(self, path: Path) -> dict:
        self.state, ckpt = checkpoint.restore(self.acc, path, self.output_dir, self.prepared, self.trainable,
                                              self.loop.optimizer, self.loop.scheduler, self.metric)
        self.loop.generator.set_state(ckpt["rng"]["data_epoch_start"])
        self.loop.epoch_start_rng = ckpt["rng"]["data_epoch_start"]
        logger.info("Resumed from %s: step %d, epoch %d, %d batches into it.", path, self.state.step,
                    self.state.epoch, self.state.batches_in_epoch)
        return ckpt

    def _checkpoint(self) -> Path | None:
        if not self.loop.checkpoints:
            return None
        self.state.train_runtime_s = self.loop.runtime_before + time.perf_counter() - self.loop.started
        with self.clock("checkpoint"):
            return checkpoint.save(self.acc, self.output_dir, self.args.save_total_limit, self.prepared,
                                   self.trainable, self.loop.optimizer, self.loop.scheduler, self.state,
                                   self.loop.epoch_start_rng)

    def _train_epoch(self, rng: dict | None) -> None:
        """The epoch's remaining optimizer steps. ``rng``: the checkpoint being resumed, in its first epoch."""
        acc, state = self.acc, self.state
        self.prepared.train()
        if rng is None:
            self.loop.generator.set_state(self.loop.epoch_start_rng)  # no-op in a straight run; exact after a resume
        self.task.start_epoch(self.collator, state.epoch, self.args.seed)
        skip = state.batches_in_epoch
        if rng is not None and not skip:  # saved at an epoch's end, before the next epoch's iterator was made
            checkpoint.restore_rng(rng["rng"], rng["rng_json"])
        batches = iter(acc.skip_first_batches(self.loop.train_loader, skip) if skip else self.loop.train_loader)
        timed = self.clock.iterate(batches, "data")  # collation and the copy to the device included
        if rng is not None and skip:  # saved inside the epoch, after its iterator had drawn its seeds
            checkpoint.restore_rng(rng["rng"], rng["rng_json"])
        window: list[dict] = []
        for batch in timed:
            window.append(batch)
            if len(window) < self.args.gradient_accumulation_steps and state.batches_in_epoch + len(window) < \
                    self.loop.batches_per_epoch:
                continue
            loss = self._optimizer_step(window)
            window = []
            with self.clock("host memory release"):
                HOST.release()  # what this step's batch shapes left with the allocator, once it amounts to something
            with self.clock("optimizer"):
                self.loop.scheduler.step()
            self._after_step(loss)
            if state.step >= self.loop.total or state.stop:
                return

    def _optimizer_step(self, window: list[dict]) -> float:
        """Forward and backward over the step's micro-batches, then one optimizer update (or a skip).

        The loss is normalised by the loss units (examples, supervised tokens) of the whole step, over every
        micro-batch and process: each micro-batch's mean loss is weighted by its share of them. Accelerate
        divides by --gradient_accumulation_steps and data parallelism averages over processes; the weight
        undoes both, so N processes and accumulation train exactly like one large batch. With equal micro-
        batches the weight is exactly 1 (text classification at full batches is unchanged).
        Returns the step's mean loss."""
        acc, args, state, model = self.acc, self.args, self.state, self.prepared
        self._ignore_repeats(window[-1], state.batches_in_epoch + len(window))
        units = [self.task.loss_units(batch) for batch in window]
        step_units = sum_processes(acc, sum(units))
        scale = acc.num_processes * args.gradient_accumulation_steps
        weighted, nonfinite = 0.0, 0
        for i, (batch, n) in enumerate(zip(window, units, strict=True)):
            last = i == len(window) - 1
            acc.gradient_state._set_sync_gradients(last)  # as Accelerator.accumulate does, per window
            with contextlib.nullcontext() if last else acc.no_sync(model):
                state.batches_in_epoch += 1
                state.samples += len(batch["labels"]) * acc.num_processes
                if "attention_mask" in batch:  # real (non-padding) tokens, for throughput in tokens/s
                    state.tokens += int(batch["attention_mask"].sum()) * acc.num_processes
                    state.positions += batch["attention_mask"].numel() * acc.num_processes
                with self.clock("forward"):
                    out = self._forward(model, batch, "train")
                    # A micro-batch of repeats only (see _ignore_repeats) has no loss of its own (its mean is
                    # 0/0); it still takes part in the backward pass that every process must make.
                    if not n:
                        loss = out.logits.float().sum() * 0.0
                    else:
                        loss = self.loss_fn(*self.task.loss_inputs(out, batch)) if self.loss_fn else out.loss
                weight = n * scale / step_units if step_units else 0.0
                with self.clock("backward"):
                    acc.backward(loss if weight == 1.0 else loss * weight)  # even when not finite: every
                    weighted += loss.detach().float() * n                   # process must reach the same
                    nonfinite |= any_process(acc, int(not torch.isfinite(loss.detach()).item()))  # collectives
        with self.clock("optimizer"):  # clipping, the update (or a skip) and zeroing the gradients
            for join, params in self.loop.waiting:  # gradual unfreezing: not their turn yet, so no gradient, no update
                if state.step < join:
                    for param in params:
                        param.grad = None
            norm = acc.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
            # Under fp16 the grad scaler expects and skips overflowing steps itself.
            if norm is not None and acc.mixed_precision != "fp16" and not math.isfinite(float(norm)):
                nonfinite = 1
            if nonfinite:
                self._nonfinite(loss)
            else:
                self._step_optimizer()
                self.skip_streak = 0
            self.loop.optimizer.zero_grad()
        if len(window) == 1 and acc.num_processes == 1:
            return loss.detach().float()
        return acc.reduce(weighted, "sum") / max(step_units, 1)

    def _step_optimizer(self) -> None:
        try:
            self.loop.optimizer.step()
        except RuntimeError as exc:  # Adam's lr / bias correction past float's range (e.g. --learning_rate 1e38)
            if "overflow" not in str(exc):
                raise
            raise PeftkitError(f"The optimizer step {self.state.step + 1} overflowed ({str(exc).splitlines()[0]}): "
                               f"--learning_rate {self.lr:g} is far beyond any rate that trains (they lie between "
                               "about 1e-6 and 1). Lower it.") from exc

    def _ignore_repeats(self, batch: dict, position: int) -> None:
        """Under N processes, Accelerate completes an epoch's last global batch with repeats of its first
        examples, so that every process gets a full batch (``even_batches``). Their labels become -100, which
        transformers' losses ignore and ``loss_units`` does not count: N processes then train exactly like one,
        whatever the data size. ``position``: the batch's 1-based index in the epoch."""
        acc = self.acc
        if acc.num_processes == 1 or position != self.loop.batches_per_epoch:
            return
        size = self.args.per_device_train_batch_size
        real_in_last_step = len(self.data["train"]) % (size * acc.num_processes)
        if real_in_last_step:  # processes take the last step's batches in rank order
            real = min(max(real_in_last_step - acc.process_index * size, 0), size)
            batch["labels"][real:] = IGNORE_INDEX

    def _nonfinite(self, loss) -> None:
        """Skip the step (--on_nonfinite skip, up to MAX_SKIP_STREAK in a row) or stop with the likely causes."""
        state, step = self.state, self.state.step + 1
        if self.args.on_nonfinite == "skip" and self.skip_streak < MAX_SKIP_STREAK:
            self.skip_streak += 1
            state.skipped_steps += 1
            logger.warning("Step %d: loss %.4g or its gradients not finite; update skipped (%d so far).", step,
                           loss.item(), state.skipped_steps)
            return
        latest = checkpoint.list_checkpoints(self.output_dir)
        streak = (f" {MAX_SKIP_STREAK} steps in a row were skipped, so skipping will not help."
                  if self.args.on_nonfinite == "skip" else "")
        resumed = state.resumed_from
        if resumed is not None and not [p for p in latest if int(p.name.split("-")[1]) > resumed]:
            # nothing was saved since the resumption: the checkpoint it came from is the first suspect
            earlier = [p.name for p in latest if int(p.name.split("-")[1]) < resumed]
            where = (f"This run resumed from step {resumed} {step - resumed} step(s) before: that checkpoint is the "
                     "first suspect (damaged, or saved from a run that was already diverging); resume from an "
                     f"earlier one ({', '.join(earlier) or 'none left'}) or start again.")
        else:
            where = f"The newest checkpoint is {latest[-1]}." if latest else "No checkpoint had been written yet."
        raise PeftkitError(
            f"The training loss or its gradients became NaN/inf at step {step} (loss {loss.item():.4g}).{streak} "
            "Likely causes: a learning rate too high for this strategy, fp16 overflow, or broken inputs. Lower "
            "--learning_rate, try --mixed_precision bf16/no, or pass --on_nonfinite skip to drop such steps. "
            + where)

    def _after_step(self, loss) -> None:
        """Count the step; log, evaluate and checkpoint when due; stop cleanly on a signal."""
        args, acc, state = self.args, self.acc, self.state
        now = time.perf_counter()
        timing = self.loop.timing
        timing["step_times"].append(now - timing["last"])  # one optimizer step, all its micro-batches
        self.loop.timing["last"] = now
        state.step += 1
        self.loop.bar.update(1)
        if state.step % args.logging_steps == 0 or state.step == self.loop.total:
            mean_loss = acc.gather(loss.reshape(1)).mean().item()
            self.loop.bar.set_postfix(loss=f"{mean_loss:.4f}")
            lr = self.loop.scheduler.get_last_lr()[0]
            state.train_history.append({"step": state.step, "loss": mean_loss, "learning_rate": lr})
            acc.log({"train/loss": mean_loss, "train/lr": lr}, step=state.step)
        if args.eval_steps and state.step % args.eval_steps == 0:
            self._evaluate_and_select()
        signum = any_process(acc, self.loop.stop.signum)
        if args.save_steps > 0 and state.step % args.save_steps == 0 or signum:
            path = self._checkpoint()
            self.loop.timing["last"] = time.perf_counter()
            if signum:
                name = signal.Signals(signum).name
                where = f"Checkpoint saved at {path}" if path else "No checkpoint could be saved under this setup"
                raise TrainingInterrupted(
                    f"Stopped by {name} after step {state.step}. {where}. To continue, run the same command "
                    "with --resume_from_checkpoint latest.", signum)

    def _evaluate_and_select(self) -> None:
        """Evaluate and keep the best weights, unless this step was already evaluated (--eval_steps)."""
        if self.state.history and self.state.history[-1]["step"] == self.state.step:
            return
        try:
            with self.clock("evaluation"):
                self._select()
        finally:
            self.loop.timing["last"] = time.perf_counter()  # evaluation time is not step time

    def _select(self) -> None:
        state, name = self.state, self.metric
        metrics = self.evaluate(self.prepared, self.loop.eval_loaders["validation"], "validation")
        check(name in metrics, f"--metric_for_best_model {name!r} is not a validation metric. "
              f"Choose one of: {', '.join(metrics)}.")
        epoch = state.epoch + state.batches_in_epoch / self.loop.batches_per_epoch
        state.history.append({"step": state.step, "epoch": round(epoch, 3), **metrics})
        self.acc.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
        logger.info("step %d: %s", state.step, {k: round(v, 4) for k, v in metrics.items()})
        if self.should_stop is not None and on_main(self.acc, lambda: self.should_stop(state.step, metrics)):
            logger.info("Stopping at step %d: peftkit search pruned this trial (its %s trails the other trials' at "
                        "this point).", state.step, name)
            state.stop, self.pruned_at_step = True, state.step
        kept = next((row for row in state.history if row["step"] == state.best_step), None)
        keep, improved = compare(self.task.metrics, name, metrics, kept)
        if keep:  # better, or tied and lower in validation loss, or tied throughout and later (selection.py)
            state.best_step = state.step
            self._save_best()
        if improved:
            state.bad_evals = 0
        else:
            state.bad_evals += 1
            patience = self.args.early_stopping_patience
            if patience and state.bad_evals >= patience:
                logger.info("Early stopping: no %s improvement in %d evaluations.", name, patience)
                state.stop = True

    def _breakdown(self, runtime: float) -> dict[str, float]:
        """This session's training time by phase; "other" is the rest (progress bar, logging, bookkeeping). A
        resumed run's earlier sessions are not in it."""
        phases = {name: round(seconds, 3) for name, seconds in self.clock.totals.items()}
        session = runtime - self.loop.runtime_before
        return phases | {"other": round(max(session - sum(self.clock.totals.values()), 0.0), 3)}

    def _finish(self, runtime: float) -> FitResult:
        """Put the best evaluation's weights back and report validation and test metrics with them."""
        state = self.state
        best = self.best_weights.load() if self.acc.is_main_process else {}
        restore_trainable(self.acc, self.prepared, self.trainable, best)
        last = state.history[-1] if state.history else {}
        # Kept the weights that the last evaluation, at the last step, scored: its validation metrics are theirs.
        kept = {k: v for k, v in last.items() if k not in ("step", "epoch")} if last.get("step") == state.step == \
            state.best_step else None
        results = {split: kept if split == "validation" and kept else self.evaluate(self.prepared, loader, split)
                   for split, loader in self.loop.eval_loaders.items()}
        if self.cache is not None:
            self.cache.detach()
        if self.acc.is_main_process:
            self.best_weights.remove()
        times = self.loop.timing["step_times"]
        return FitResult(eval=results["validation"], test=results.get("test"), global_step=state.step,
                         epochs=state.epoch, train_runtime_s=runtime, train_samples=state.samples,
                         history=state.history, train_history=state.train_history, stopped_early=state.stop,
                         pruned_at_step=self.pruned_at_step,
                         selection=describe(state.history, self.metric, state.best_step)
                         if state.best_step is not None else None,
                         feature_cache=self.cache is not None, train_tokens=state.tokens,
                         train_positions=state.positions,
                         step_time_median_s=statistics.median(times) if times else None,
                         skipped_steps=state.skipped_steps, resumed_from_step=state.resumed_from,
                         time_breakdown_s=self._breakdown(runtime))
