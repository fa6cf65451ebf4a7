"""Will it fit, and how long will it take: a training run's memory and time, planned without loading a weight.

The model is built on the meta device from its config.json (shapes, no storage) and adapted by the strategy as
training would adapt it. A dispatch mode then runs two optimizer steps of meta tensors of the run's batch shape
through the real forward, backward and optimizer code (the transformers model, peft's adapters, activation
checkpointing, the fused attention kernel a CPU or GPU runs) and follows every tensor from allocation to release.
Its peak, split into what is alive at that moment (activations saved for backward, gradients, optimizer state and
the backward pass's temporaries), is the working memory the run needs on top of the weights, which are counted per
dtype and quantization from the parameters' shapes. The same pass counts each step's floating-point operations
(torch's FlopCounterMode), which a calibration of a few real steps on the device turns into seconds.

What it does not see, and adds or leaves out: memory the allocator holds beyond live tensors (fragmentation; on a
GPU the CUDA context), the data loader, and mixed-precision autocast (the pass runs in the parameters' own dtype;
under --bf16/--fp16 the activations are scaled to half precision, an approximation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from peftkit.errors import PeftkitError, check
from peftkit.modeling import enable_activation_checkpointing
from peftkit.units import MiB

logger = logging.getLogger(__name__)

SHARDINGS = ("none", "ddp", "fsdp", "zero2", "zero3")
# Host memory a CPU run holds beyond its live tensors (glibc's arenas, oneDNN and OpenMP scratch): a fixed part,
# a share of the working memory that is allocated and freed in every step (activations, temporaries: glibc keeps
# much of it after the step), and a smaller share of what lives across steps (gradients, optimizer state). The
# shares were fitted on configurations kept apart from the planner benchmark's table (`python -m
# benchmarks.planner --fit_overhead`; benchmarks/results/planner_cpu/results.json, "overhead_fit").
CPU_OVERHEAD_BYTES = 160 * MiB
CPU_OVERHEAD_FRACTION = 0.20  # the fit gave 0.202 (2026-12-07)
CPU_LONG_LIVED_FRACTION = 0.05
CUDA_CONTEXT_BYTES = 600 * MiB  # the CUDA context and kernels: outside max_memory_allocated, inside nvidia-smi
CUDA_FRAGMENTATION = 0.10  # reserved over allocated, typical of the caching allocator under training


@dataclass
class Setup:
    """The run being planned, per process."""

    micro_batch: int
    length: int  # tokens per example of the longest batch (image tasks: ignored)
    accumulation: int = 1
    gradient_checkpointing: bool = False
    processes: int = 1
    sharding: str = "none"
    device: str = "cpu"  # the device type the run trains on: cpu or cuda
    mixed_precision: str | None = None  # bf16 / fp16 / None
    optimizer: str = "adamw"


@dataclass
class Plan:
    """Predicted per-process memory (bytes) and compute of one optimizer step of one strategy."""

    strategy: str
    setup: Setup
    trainable: int
    frozen: int
    weights: int
    weights_by_kind: dict[str, int]
    gradients: int
    optimizer: int
    activations: int
    temporaries: int
    overhead: int
    flops_per_step: float
    approximate: list[str] = field(default_factory=list)
    weights_only: int = 0  # what a weights-only estimate (accelerate estimate-memory) says: the model in its dtype
    step_seconds: float | None = None
    calibration: dict[str, Any] | None = None

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.temporaries + self.overhead

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["peak"] = self.peak
        return out


# -- the meta model ---------------------------------------------------------------------------------------------


def meta_model(task: Any, strategy: Any, config, dtype: torch.dtype) -> tuple[nn.Module, list[str]]:
    """The model a run would train, with shapes and no storage: built from ``config`` on the meta device, with the
    task's new modules, adapted by the strategy's :meth:`plan_model`. Returns ``(model, head names)``."""
    with torch.device("meta"):
        try:
            model = task.auto_class.from_config(config, dtype=dtype)
        except (KeyError, ValueError) as exc:
            raise PeftkitError(f"Model type {config.model_type!r} has no {task.kind or task.name} class in "
                               f"transformers, so it cannot be planned for task {task.name!r}: {exc}") from None
    head_names = task.new_modules(model)
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    return model, head_names


def weight_bytes(model: nn.Module, bits: Callable[[str, nn.Module], float | None]) -> dict[str, int]:
    """Bytes of every parameter and buffer, by dtype, with the weights of linear layers that ``bits`` names
    (quantized) at their stored bits per weight. Tied weights count once."""
    kinds: dict[str, int] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        quantized = bits(name, module)
        for pname, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if quantized is not None and pname == "weight":
                kind, size = f"{quantized:.3g}-bit", math.ceil(tensor.numel() * quantized / 8)
            else:
                kind, size = str(tensor.dtype).removeprefix("torch."), tensor.numel() * tensor.element_size()
            kinds[kind] = kinds.get(kind, 0) + size
    return kinds


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameters, tied ones once."""
    trainable = frozen = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


# -- the simulated steps ----------------------------------------------------------------------------------------


class _Memory(TorchDispatchMode):
    """Follows every tensor storage that an operation creates from its allocation to its release (a weak
    reference on the storage), by the phase that created it, and keeps the breakdown at the peak.

    Data-dependent Python branches on meta tensors (``mask.all()`` and the like) get the answer of a batch
    without padding: True, or 1."""

    def __init__(self, ignore: list[torch.Tensor]) -> None:
        super().__init__()
        self.known: dict[int, Any] = {}  # id(storage) -> weak reference, for storages seen (or ignored)
        self.live: dict[int, tuple[int, str]] = {}  # id(storage) -> (bytes, category)
        self.phase = "activations"
        self.total = self.peak = 0
        self.at_peak: dict[str, int] = {}
        for tensor in ignore:
            self._remember(tensor.untyped_storage(), None)

    def reset_peak(self) -> None:
        self.peak = self.total
        self.at_peak = self._breakdown()

    def _breakdown(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for size, category in self.live.values():
            out[category] = out.get(category, 0) + size
        return out

    def _remember(self, storage, category: str | None) -> None:
        key = id(storage)

        def forget(_ref, key=key):
            self.known.pop(key, None)
            size, _ = self.live.pop(key, (0, None))
            self.total -= size

        self.known[key] = weakref.ref(storage, forget)
        if category is not None:
            size = storage.nbytes()
            self.live[key] = (size, category)
            self.total += size
            if self.total > self.peak:
                self.peak = self.total
                self.at_peak = self._breakdown()

    def recategorize(self, tensor: torch.Tensor, category: str) -> None:
        key = id(tensor.untyped_storage())
        if key in self.live:
            self.live[key] = (self.live[key][0], category)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else (1.0 if args[0].is_floating_point() else 1)
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if id(storage) not in self.known:
                    self._remember(storage, self.phase)
        return out


def _fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    """scaled_dot_product_attention as a CPU or GPU runs it at training sizes (a fused kernel that saves the
    output and the log-sum-exp, never the attention matrix); the meta device would take the math path instead.
    Memory and FLOPs are those of PyTorch's CPU flash-attention kernel, which saves what GPU kernels save."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


@contextlib.contextmanager
def _fused_sdpa() -> Iterator[None]:
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer | None:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-3, foreach=False)


def simulate(model: nn.Module, batch: dict[str, torch.Tensor], setup: Setup) -> dict[str, Any]:
    """One optimizer step of ``setup.accumulation`` micro-batches on the meta device, after a first optimizer
    step on empty gradients has created the optimizer's state (as the first real step does). Returns the peak
    working memory (bytes above the weights, by category) and the step's FLOPs."""
    params = list(model.parameters()) + list(model.buffers())
    tracker = _Memory(params)
    optimizer = _optimizer(model, setup.optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    handles = [p.register_post_accumulate_grad_hook(lambda p: tracker.recategorize(p.grad, "gradients"))
               for p in trainable]
    flops = FlopCounterMode(display=False)
    model.train()
    # Python's cyclic collector stays on, as in training: activation checkpointing releases its recomputed
    # tensors through reference cycles, which only a collection frees (with collection off, the 135M LoRA
    # 2x1024 row of the planner benchmark planned 44% above its measured peak; with it, within 5%).
    gc.collect()
    try:
        with _fused_sdpa(), tracker:
            if optimizer is not None:
                tracker.phase = "optimizer"
                for p in trainable:
                    p.grad = torch.zeros_like(p)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            tracker.reset_peak()
            with flops:
                for _ in range(setup.accumulation):
                    tracker.phase = "activations"
                    loss = model(**batch).loss
                    tracker.phase = "temporaries"
                    loss.backward()
                    del loss
                tracker.phase = "optimizer"
                if optimizer is not None:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    return {"at_peak": dict(tracker.at_peak), "peak": tracker.peak, "flops": float(flops.get_total_flops())}


# -- the plan ---------------------------------------------------------------------------------------------------


def plan(task: Any, strategy: Any, strategy_name: str, config, setup: Setup, dtype: torch.dtype) -> Plan:
    """Plan one strategy's run of ``task`` on the model of ``config`` (a transformers config). The random number
    generators are left as they were: a run that plans (once, or several times for --auto_batch_size)
    initialises and trains as one that does not."""
    with torch.random.fork_rng(devices=[]):
        return _plan(task, strategy, strategy_name, config, setup, dtype)


def _plan(task: Any, strategy: Any, strategy_name: str, config, setup: Setup, dtype: torch.dtype) -> Plan:
    check(setup.sharding in SHARDINGS, f"Unknown sharding {setup.sharding!r}; one of {', '.join(SHARDINGS)}.")
    model, head_names = meta_model(task, strategy, config, dtype)
    weights_only = sum(weight_bytes(model, lambda n, m: None).values())
    bits = strategy.weight_bits(model, head_names)
    if setup.gradient_checkpointing:  # as training does: before the strategy wraps the model
        enable_activation_checkpointing(model)
    model = strategy.plan_model(model, task, head_names)
    kinds = weight_bytes(model, lambda name, module: bits.get(_original_name(name)))
    trainable, frozen = count_parameters(model)
    batch = task.example_batch(setup.micro_batch, setup.length, config)
    found = simulate(model, batch, setup)
    at_peak = found["at_peak"]
    activations, temporaries = at_peak.get("activations", 0), at_peak.get("temporaries", 0)
    gradients, optimizer = at_peak.get("gradients", 0), at_peak.get("optimizer", 0)
    approximate: list[str] = []
    if setup.mixed_precision in ("bf16", "fp16") and dtype == torch.float32:
        # autocast computes most activations in half precision; the pass ran in float32
        activations, temporaries = activations // 2, temporaries // 2
        approximate.append("activations under autocast taken as half of float32's")
    if bits:  # bitsandbytes dequantizes one weight at a time for the backward pass
        largest = max((m.weight.numel() for n, m in model.named_modules()
                       if _original_name(n) in bits and hasattr(m, "weight")), default=0)
        temporaries += largest * (2 if setup.device == "cuda" else 4)
    weights = sum(kinds.values())
    all_gradients = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()
                        if p.requires_grad)
    weights, gradients, optimizer, extra = shard(setup, weights, gradients, optimizer, model, all_gradients)
    working = activations + temporaries + extra
    if setup.device == "cuda":
        overhead = CUDA_CONTEXT_BYTES + int(CUDA_FRAGMENTATION * (working + gradients))
    else:
        overhead = (CPU_OVERHEAD_BYTES + int(CPU_OVERHEAD_FRACTION * working)
                    + int(CPU_LONG_LIVED_FRACTION * (gradients + optimizer)))
    return Plan(strategy=strategy_name, setup=setup, trainable=trainable, frozen=frozen, weights=weights,
                weights_by_kind=kinds, gradients=gradients, optimizer=optimizer, activations=activations,
                temporaries=temporaries + extra, overhead=overhead, flops_per_step=found["flops"],
                approximate=approximate, weights_only=weights_only)


def _original_name(name: str) -> str:
    """A module's name before peft wrapped the model (``base_model.model.x.q_proj.base_layer``: ``x.q_proj``)."""
    return name.removeprefix("base_model.model.").removesuffix(".base_layer")


def shard(setup: Setup, weights: int, gradients: int, optimizer: int, model: nn.Module,
          all_gradients: int) -> tuple[int, int, int, int]:
    """Per-process weights, gradients and optimizer state under the sharding, and what the sharding itself adds
    (DDP's gradient buckets, a second copy of every gradient; ZeRO-2's reduce buckets; FSDP/ZeRO-3's gathered
    layers). ``gradients``: those alive at the peak; ``all_gradients``: every trainable weight's."""
    n = max(1, setup.processes)
    if n == 1 or setup.sharding == "none":
        return weights, gradients, optimizer, 0
    if setup.sharding == "ddp":
        return weights, gradients, optimizer, all_gradients
    if setup.sharding == "zero2":
        return weights, gradients // n, optimizer // n, all_gradients // n
    layer = max((sum(p.numel() * p.element_size() for p in m.parameters())
                 for m in model.modules() if isinstance(m, nn.ModuleList) for m in m), default=0)
    return weights // n, gradients // n, optimizer // n, 2 * layer  # the layer in use and the one prefetched


# -- time -------------------------------------------------------------------------------------------------------


def fit_step_time(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """``(seconds per step at zero FLOPs, FLOPs per second)`` fitted to ``[(flops, seconds), ...]``: a line
    through two or more calibration steps; one sample gives a line through the origin."""
    if len(samples) == 1 or len({f for f, _ in samples}) == 1:
        flops = sum(f for f, _ in samples)
        return 0.0, flops / max(sum(s for _, s in samples), 1e-9)
    n = len(samples)
    mf, ms = sum(f for f, _ in samples) / n, sum(s for _, s in samples) / n
    slope = sum((f - mf) * (s - ms) for f, s in samples) / sum((f - mf) ** 2 for f, _ in samples)
    if slope <= 0:  # noise larger than the signal: the average rate
        return 0.0, mf / max(ms, 1e-9)
    return max(0.0, ms - slope * mf), 1.0 / slope


def step_seconds(flops: float, fit: tuple[float, float]) -> float:
    fixed, rate = fit
    return fixed + flops / rate


def time_steps(model: nn.Module, batch: dict[str, torch.Tensor], optimizer, steps: int) -> float:
    """Seconds per optimizer step of real training on ``batch`` (after one warm-up step), in training mode
    (dropout, and activation checkpointing, which transformers applies only while training)."""
    model.train()

    def one():
        loss = model(**batch).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if batch["labels"].device.type == "cuda":
            torch.cuda.synchronize()

    one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


# -- the device ---------------------------------------------------------------------------------------------------


def available_memory(device: str) -> int | None:
    """Bytes this process could use now: free GPU memory, or the host's MemAvailable."""
    if device == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
