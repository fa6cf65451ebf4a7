"""Merge trained adapters into full-precision base weights, with a parity report and no half-written output.

The merged directory is a plain transformers model (safetensors, label maps, tokenizer). Before it is
published, three models are compared on held-out data: the adapter model, the merged model in memory, and
the merged model reloaded from disk. If they disagree beyond the tolerance for the chosen dtype, nothing is
written. A qlora run is merged into the original unquantized base, never into 4-bit weights; the report
then also shows the accuracy of the quantized-base model that was actually trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from peftkit.checkpoint import current_umask, share_files
from peftkit.config import DataArguments
from peftkit.errors import PeftkitError, check, is_write_failure, write_failure
from peftkit.evaluation import evaluate
from peftkit.identity import fingerprint
from peftkit.layout import write_manifest
from peftkit.modeling import load_model, resolve_model_path
from peftkit.run_dir import NO_TRUST, Trust, eval_data, load_adapter, model_arguments, read_config, verify_run
from peftkit.strategies import get_strategy
from peftkit.tasks import build_from_config

logger = logging.getLogger(__name__)
REPORT_FILE = "merge_report.json"
# Max |logit difference| and min prediction agreement, reference (float32 adapter) vs the merged model.
TOLERANCE = {"float32": (1e-4, 1.0), "bfloat16": (0.1, 0.98), "float16": (2e-2, 0.99)}
COMBINATIONS = ("linear", "cat", "ties", "dare_ties", "dare_linear")
HEAD_PREFIX = "base_model.model."


@dataclasses.dataclass
class Source:
    """One run to merge, as recorded in its directory."""

    run_dir: Path
    config: dict[str, Any]

    @property
    def base(self) -> dict[str, Any]:
        """The recorded base; runs from before fingerprints were recorded have none to check."""
        return self.config.get("base") or {"model_name_or_path": self.config["model"]["model_name_or_path"],
                                           "fingerprint": None}

    @property
    def is_adapter(self) -> bool:
        return (self.run_dir / "adapter_config.json").is_file()


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PeftkitError(f"Output directory {str(out)!r} exists and is not empty. Choose another --output_dir "
                           "or pass --overwrite to replace it.")


def check_base(sources: list[Source], base_override: str | None, trust: Trust = NO_TRUST) -> str:
    """The base every run was trained on, verified against its recorded fingerprint (a run that records none is
    refused unless ``trust.unverified_base``)."""
    names = {s.base["model_name_or_path"] for s in sources}
    prints = {s.base["fingerprint"] for s in sources}
    check(len(names) == 1 and len(prints) == 1, "The runs were trained on different bases: "
          + "; ".join(f"{s.run_dir} on {s.base['model_name_or_path']}" for s in sources)
          + ". Only adapters of one base can be merged together.")
    recorded, name = prints.pop(), names.pop()
    base = base_override or name
    current = fingerprint(resolve_model_path(base))
    check(recorded is not None or trust.unverified_base,
          f"{sources[0].run_dir} records no fingerprint of the base model its adapter was trained on, so peftkit "
          f"cannot check that {base!r} is that base (merging onto another base gives a wrong model). A run peftkit "
          "wrote records one: this one was edited or damaged, or its base had no local files. Pass --skip_base_check "
          "to merge anyway.")
    if recorded is None or current is None:
        logger.warning("Cannot verify the base's identity (%s); merging onto %s.",
                       "--skip_base_check" if recorded is None else "its files are not local", base)
    elif current != recorded:
        raise PeftkitError(
            f"Base mismatch: {sources[0].run_dir} was trained on {name!r} (fingerprint {recorded[:12]}), but "
            f"{base!r} has fingerprint {current[:12]}. Merging onto another base gives a wrong model; pass "
            "--base_model_name_or_path with the base the adapter was trained on.")
    return base


def check_labels(sources: list[Source]) -> list[str] | None:
    labels = sources[0].config.get("labels")
    for s in sources[1:]:
        check(s.config.get("labels") == labels, f"Label sets differ: {sources[0].run_dir} has {labels}, "
              f"{s.run_dir} has {s.config.get('labels')}. Only runs with the same labels can be merged together.")
    return labels


def full_precision_strategy(config: dict[str, Any]):
    """The run's strategy with quantization removed: adapters merge into the original, unquantized base."""
    args = dict(config["strategy_args"])
    if "quantization" in args:
        args["quantization"] = None
    return get_strategy(config["strategy"]).build(**args)


def parity_data(source: Source, processor, samples: int | None):
    """The run's validation split (at most ``samples`` examples), preprocessed, as a DataLoader; and the task."""
    cfg = source.config
    task = build_from_config(cfg, DataArguments(**(cfg["data"] | {
        "max_eval_samples": samples or cfg["data"]["max_eval_samples"]})))
    _, data = eval_data(task, cfg, processor, "validation")
    size = cfg["training"].get("per_device_eval_batch_size", 64)
    return DataLoader(data["validation"], batch_size=size, collate_fn=task.collator(processor)), task


def on_device(loader: DataLoader, device: torch.device):
    for batch in loader:
        yield {k: v.to(device) for k, v in batch.items()}


def score(task, model, loader: DataLoader) -> tuple[dict[str, float], torch.Tensor]:
    """The task's metrics (the shared evaluation loop) and the logits a merge must reproduce, on the CPU."""
    model.eval()
    kept: list[torch.Tensor] = []
    device = next(model.parameters()).device
    metrics = evaluate(Accelerator(), task, model, on_device(loader, device),
                       collect=lambda out, batch: kept.append(task.parity_logits(out, batch).cpu()))
    return metrics, torch.cat(kept)


def compare(reference: torch.Tensor, other: torch.Tensor, allowed: float) -> dict[str, float]:
    """Largest logit difference and argmax agreement. Agreement is also given over the decisive rows only:
    those whose top two reference logits are more than twice the allowed difference apart (a near-tie, common
    over a 49k-token vocabulary, may flip within float tolerance)."""
    top2 = reference.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * allowed
    agree = reference.argmax(-1) == other.argmax(-1)
    return {"max_abs_logit_diff": float((reference - other).abs().max()),
            "prediction_agreement": float(agree.float().mean()),
            "decisive_agreement": float(agree[decisive].float().mean()) if decisive.any() else 1.0}


def load_reference(sources: list[Source], base: str, weights: list[float], combination: str, density: float,
                   trust: Trust = NO_TRUST):
    """The float32 model the merge must reproduce: a plain run's model, or base + adapter(s) + head."""
    cfg = sources[0].config
    task = build_from_config(cfg, DataArguments(**cfg["data"]))
    if not sources[0].is_adapter:
        return task.auto_class.from_pretrained(sources[0].run_dir, dtype=torch.float32, trust_remote_code=
                                               model_arguments(sources[0].run_dir, cfg, trust).trust_remote_code)
    strategy = full_precision_strategy(cfg)
    processor = task.load_processor(sources[0].run_dir)
    if len(sources) == 1:
        return load_adapter(sources[0].run_dir, cfg, task, processor, strategy, base, trust)
    model_args = model_arguments(sources[0].run_dir, cfg, trust, base)
    base_model, _ = load_model(task, strategy, model_args, processor)
    return combine_adapters(base_model, sources, weights, combination, density)


def combine_adapters(base_model, sources: list[Source], weights: list[float], combination: str, density: float):
    """peft's weighted-adapter API for the LoRA parts; the task heads are combined linearly, same weights.

    peft refuses to combine adapters whose heads are `modules_to_save`, so each adapter is loaded from a
    temporary copy holding only its LoRA tensors, and the heads (plain linear layers) are averaged with
    the adapter weights.
    """
    import tempfile

    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    head_state: dict[str, torch.Tensor] = {}
    names = [f"run{i}" for i in range(len(sources))]
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, weight, source in zip(names, weights, sources, strict=True):
            copy_dir = Path(tmp) / name
            copy_dir.mkdir()
            adapter_config = json.loads((source.run_dir / "adapter_config.json").read_text())
            adapter_config.update(modules_to_save=None, task_type=None)  # no head wrapper from peft
            (copy_dir / "adapter_config.json").write_text(json.dumps(adapter_config))
            tensors = load_file(str(source.run_dir / "adapter_model.safetensors"))
            save_file({k: v for k, v in tensors.items() if "lora_" in k}, str(copy_dir / "adapter_model.safetensors"))
            for key, value in tensors.items():
                if "lora_" not in key:
                    key = key.removeprefix(HEAD_PREFIX)
                    head_state[key] = head_state.get(key, 0) + weight * value.float()
            if model is None:
                model = PeftModel.from_pretrained(base_model, copy_dir, adapter_name=name)
            else:
                model.load_adapter(copy_dir, adapter_name=name)
    kwargs = {"density": density} if combination.startswith(("ties", "dare")) else {}
    model.add_weighted_adapter(names, weights, "combined", combination_type=combination, **kwargs)
    model.set_adapter("combined")
    for name in names:
        model.delete_adapter(name)
    result = model.base_model.model.load_state_dict(head_state, strict=False)
    check(not result.unexpected_keys, f"Unexpected head tensors in the adapters: {result.unexpected_keys[:5]}")
    return model


def merge(run_dirs: list[str], output_dir: str, dtype: str = "float32", parity_samples: int | None = None,
          weights: list[float] | None = None, combination: str = "linear", density: float = 0.5,
          base_model_name_or_path: str | None = None, overwrite: bool = False, trust: Trust = NO_TRUST
          ) -> dict[str, Any]:
    """Merge the run(s) into one plain model at ``output_dir``; return the parity report. ``trust``: what the
    command line allowed (``run_dir.Trust``)."""
    check(dtype in TOLERANCE, f"--dtype must be one of {', '.join(TOLERANCE)}, got {dtype!r}.")
    check(combination in COMBINATIONS, f"--combination must be one of {', '.join(COMBINATIONS)}, got {combination!r}.")
    check(parity_samples is None or parity_samples > 0, f"--parity_samples must be positive, got {parity_samples}.")
    out = Path(output_dir)
    check_output_dir(out, overwrite)
    sources = [Source(Path(r), read_config(r)) for r in run_dirs]
    for source in sources:
        verify_run(source.run_dir)  # a damaged or edited run is refused before anything is built from it
    weights = weights or [1.0 / len(sources)] * len(sources)
    check(len(weights) == len(sources), f"--weights has {len(weights)} value(s) for {len(sources)} run(s).")
    if len(sources) > 1:
        plain = [str(s.run_dir) for s in sources if not s.is_adapter]
        check(not plain, f"Only adapter runs can be combined; {', '.join(plain)} hold full models.")
        check(len({s.config["task"] for s in sources}) == 1, "The runs are for different tasks.")
    for source in sources:  # remote code only if this command allows it, before anything is read or loaded
        model_arguments(source.run_dir, source.config, trust)
    base = check_base(sources, base_model_name_or_path, trust) if sources[0].is_adapter else None
    labels = check_labels(sources)

    processor = build_from_config(sources[0].config, DataArguments(**sources[0].config["data"])).load_processor(
        sources[0].run_dir)
    loader, task = parity_data(sources[0], processor, parity_samples)
    metric = task.parity_metric or task.default_metric  # the score each model's line of the report shows
    reason = task.not_plain_reason()
    check(reason is None, f"Cannot merge {sources[0].run_dir} into a plain transformers model: {reason}.")
    reference = load_reference(sources, base, weights, combination, density, trust)
    ref_metrics, ref_logits = score(task, reference, loader)
    report: dict[str, Any] = {
        "runs": [str(s.run_dir.resolve()) for s in sources], "strategy": sources[0].config["strategy"],
        "base": base or sources[0].base["model_name_or_path"], "dtype": dtype,
        "combination": combination if len(sources) > 1 else None, "weights": weights if len(sources) > 1 else None,
        "labels": labels, "parity_samples": len(loader.dataset), "parity_rows": len(ref_logits), "metric": metric,
        metric: {"adapter_model": round(ref_metrics[metric], 6)},
    }
    if sources[0].config["strategy_args"].get("quantization"):
        from peftkit.run_dir import load_run

        trained, *_ = load_run(sources[0].run_dir, trust=trust)  # the quantized base it was trained on, plus adapter
        report[metric]["quantized_base_adapter_model"] = round(score(task, trained, loader)[0][metric], 6)
        del trained

    merged = reference.merge_and_unload() if sources[0].is_adapter else reference
    merged = merged.to(getattr(torch, dtype))
    mem_metrics, mem_logits = score(task, merged, loader)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))  # a fresh name, made by us alone
    try:
        try:
            merged.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        except Exception as exc:  # noqa: BLE001 - a full disk, however the writer reports it
            if not is_write_failure(exc):
                raise
            raise write_failure(exc, out.parent, "the merged model", "Nothing was published: "
                                f"{str(out)!r} is as it was.") from exc
        reloaded = task.auto_class.from_pretrained(tmp, dtype=getattr(torch, dtype))
        disk_metrics, disk_logits = score(task, reloaded, loader)
        report[metric] |= {"merged_in_memory": round(mem_metrics[metric], 6),
                           "merged_reloaded": round(disk_metrics[metric], 6)}
        check_parity(report, ref_logits, mem_logits, disk_logits)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
        share_files(tmp)
        write_manifest(tmp)  # every file's sha256, for whoever copies or serves the merged model
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp made it private; the published folder is the user's default
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a failure or an interruption: nothing half-written
    return report


def check_parity(report: dict[str, Any], ref_logits, mem_logits, disk_logits) -> None:
    """Fill in the comparisons; raise (so nothing is published) when they exceed the dtype's tolerance. The
    allowed difference is relative to the logits' scale (an LM's run to 30 and more, a classifier's to a few):
    TOLERANCE's value per unit of the largest reference logit, and at least that value."""
    max_diff, min_agreement = TOLERANCE[report["dtype"]]
    scale = max(1.0, float(ref_logits.abs().max()))
    allowed = max_diff * scale
    report["adapter_vs_merged_in_memory"] = compare(ref_logits, mem_logits, allowed)
    report["adapter_vs_merged_reloaded"] = compare(ref_logits, disk_logits, allowed)
    worst = report["adapter_vs_merged_reloaded"]
    report["tolerance"] = {"max_abs_logit_diff": allowed, "largest_logit": scale,
                           "min_decisive_agreement": min_agreement}
    report["passed"] = all(r["max_abs_logit_diff"] <= allowed and r["decisive_agreement"] >= min_agreement
                           for r in (report["adapter_vs_merged_in_memory"], worst))
    if not report["passed"]:
        raise PeftkitError(f"Parity check failed for {report['dtype']}: max |logit difference| "
                           f"{worst['max_abs_logit_diff']:.3g} (allowed {allowed:.3g}), prediction agreement "
                           f"{worst['decisive_agreement']:.4f} where the reference is not a near-tie (needed "
                           f"{min_agreement}). Nothing was written. Report: {json.dumps(report)}")


def publish(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an existing one (--overwrite) is replaced only now."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


