"""Putting a trained run to work: load it, evaluate it on data, use it on new inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import DatasetDict

from peftkit.config import DataArguments, ModelArguments
from peftkit.console import quiet_known_noise, transformers_errors_only
from peftkit.data import load_file, load_raw_datasets
from peftkit.errors import PeftkitError, check
from peftkit.evaluation import eval_loader, evaluate
from peftkit.identity import fingerprint
from peftkit.layout import CONFIG_FILE, MANIFEST_FILE
from peftkit.modeling import load_model, resolve_model_path
from peftkit.strategies import get_strategy
from peftkit.tasks import build_from_config

logger = logging.getLogger(__name__)
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


UNCHECKED = {"README.md"}  # the model card: documentation a user may edit; nothing loads it


def verify_run(run_dir: str | Path) -> None:
    """Check the run's files against the sizes and sha256 digests its manifest recorded when the run finished
    (runs from before manifests have none to check). A changed, truncated or missing file is refused, named."""
    from peftkit.assets import sha256_of

    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PeftkitError(f"{str(path)!r} is unreadable ({exc}): the run directory is damaged. Restore it from a "
                           "copy, or train again.") from exc
    for rel, record in files.items():
        if rel in UNCHECKED:
            continue
        file = run_dir / rel
        check(file.is_file(), f"{str(run_dir)!r} is incomplete: {rel} is missing (the run wrote it; "
              f"{MANIFEST_FILE} lists it). Restore the run directory from a copy, or train again.")
        size = file.stat().st_size
        damaged = size != record["size"] or sha256_of(file) != record["sha256"]
        check(not damaged, f"{str(file)!r} is not the file the run wrote: "
              + (f"{size:,} bytes instead of {record['size']:,}" if size != record["size"] else
                 "its sha256 differs from the one recorded")
              + f" ({MANIFEST_FILE}). It was damaged or edited since; restore it from a copy, or train again.")


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    check(path.is_file(), f"{str(run_dir)!r} is not a peftkit run directory (no {CONFIG_FILE}). Pass the "
          "--output_dir of a finished `peftkit train` run.")
    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class Trust:
    """What loading a run may do beyond reading its weights. Granted only on the command line of the command that
    loads it (``--trust_remote_code``, ``--skip_base_check``), never by the run's own files: run directories get
    shared and downloaded, and their peftkit_config.json is plain text anyone can edit."""

    remote_code: bool = False  # let transformers run the base model's Python code (its auto_map)
    unverified_base: bool = False  # load an adapter whose run records no fingerprint of its base


NO_TRUST = Trust()  # what a run is loaded with unless the user grants more


def model_arguments(run_dir: Path, cfg: dict[str, Any], trust: Trust, base: str | None = None) -> ModelArguments:
    """The run's model arguments, to load its base again; ``trust_remote_code`` comes from ``trust`` alone."""
    saved = dict(cfg["model"])
    name = base or saved["model_name_or_path"]
    check(not saved.get("trust_remote_code") or trust.remote_code,
          f"{str(run_dir)!r} was trained with --trust_remote_code: loading its base {name!r} lets transformers run "
          "Python code from that model's files. peftkit never takes that permission from a run directory: pass "
          "--trust_remote_code to this command if you trust that code.")
    return ModelArguments(**(saved | {"trust_remote_code": trust.remote_code, "model_name_or_path": name}))


def check_base(run_dir: Path, cfg: dict[str, Any], name_or_path: str, trust: Trust = NO_TRUST) -> None:
    """An adapter only means something on the weights it was trained on: compare recorded fingerprints. A run
    that records none (edited, damaged, or trained on a base with no local files) is refused unless the user
    says so: nothing then shows that the base is the one it was trained on."""
    recorded = (cfg.get("base") or {}).get("fingerprint")
    if recorded is None:
        check(trust.unverified_base,
              f"{str(run_dir)!r} records no fingerprint of the base model its adapter was trained on, so peftkit "
              f"cannot check that {name_or_path!r} is that base (an adapter on another base gives wrong outputs). "
              "A run peftkit wrote records one: this one was edited or damaged, or its base had no local files. "
              "Pass --skip_base_check to load it anyway.")
        logger.warning("--skip_base_check: loading the adapter of %s on %s without checking that base.", run_dir,
                       name_or_path)
        return
    current = fingerprint(resolve_model_path(name_or_path))
    check(current is None or current == recorded,
          f"The adapter in {str(run_dir)!r} was trained on a base with fingerprint {recorded[:12]}, but "
          f"{name_or_path!r} now holds different weights ({current and current[:12]}): an adapter from another base "
          "gives wrong outputs. Restore that base model, or retrain on this one.")


def load_adapter(run_dir: Path, cfg: dict[str, Any], task, processor, strategy=None, base: str | None = None,
                 trust: Trust = NO_TRUST):
    """The base model (as ``strategy`` loads it; default the run's own) with the run's adapter (and head)."""
    from peft import PeftModel

    strategy = strategy or get_strategy(cfg["strategy"]).build(**cfg["strategy_args"])
    model_args = model_arguments(run_dir, cfg, trust, base)
    if base is None:
        check_base(run_dir, cfg, model_args.model_name_or_path, trust)
    with transformers_errors_only():  # the base's head is reported as new; the run's own is loaded next
        base_model, _ = load_model(task, strategy, model_args, processor)
    try:
        return PeftModel.from_pretrained(base_model, run_dir)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise PeftkitError(f"The adapter in {str(run_dir)!r} does not fit the base model "
                           f"{model_args.model_name_or_path!r}: {str(exc).splitlines()[0][:200]}. It was trained "
                           "on another base; load it with that one.") from exc


def load_run(run_dir: str | Path, data_overrides: dict[str, Any] | None = None, trust: Trust = NO_TRUST):
    """``(model, processor, config, task)`` of a run: a plain model, or the base with its adapter and head.
    ``trust``: what the user allowed on the command line (``Trust``)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    verify_run(run_dir)
    quiet_known_noise()
    task = build_from_config(cfg, DataArguments(**(cfg["data"] | (data_overrides or {}))))
    check(any((run_dir / name).is_file() for name in WEIGHT_FILES),
          f"{str(run_dir)!r} holds no safetensors weights ({', '.join(WEIGHT_FILES)}). peftkit reads weights only "
          "from safetensors, never from pickle files (.bin, .pt), which can run code when loaded.")
    processor = task.load_processor(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        model = load_adapter(run_dir, cfg, task, processor, trust=trust)
    else:
        model_args = model_arguments(run_dir, cfg, trust)  # a custom architecture's code: only if allowed here
        model = task.auto_class.from_pretrained(run_dir, use_safetensors=True,
                                                trust_remote_code=model_args.trust_remote_code)
    task.prepare_model(model)  # e.g. the pooling the run trained with
    model.eval()
    return model, processor, cfg, task


def default_split(cfg: dict[str, Any]) -> str:
    """The split `peftkit eval` and `analyze` read unless told: the test split where the run's data has one, else
    the validation split, with a warning. peftkit carves a validation split out of a user's training file when
    none is given, never a test split: a run trained on own files has one only with --test_file (--test_dir)."""
    data = cfg.get("data") or {}
    own = data.get("train_file") or data.get("train_dir")
    if not own or data.get("test_file") or data.get("test_dir"):
        return "test"
    logger.warning("The run was trained without --test_file, so its data has no test split: evaluating its "
                   "validation split, which chose the kept checkpoint (its figures flatter the model). For an "
                   "unbiased figure pass --eval_file with held-out labelled data (image_cls: --test_dir).")
    return "validation"


def eval_data(task, cfg: dict[str, Any], processor, split: str, eval_file: str | None = None,
              eval_dir: str | None = None) -> DatasetDict:
    """``split`` of a run's data (or ``eval_file`` / the image folder ``eval_dir`` as that split), checked against
    the run's label space and preprocessed; raw and processed."""
    if eval_dir:
        check(not eval_file, "Pass --eval_file or --test_dir, not both.")
        args = dataclasses.replace(task.data, train_dir=eval_dir, validation_dir=None, test_dir=None,
                                   train_file=None, dataset_name=None)
        folders = task.load_raw(args)
        check(folders is not None, f"--test_dir is a folder of images: task {task.name!r} reads data files "
              "(--eval_file).")
        raw = DatasetDict({split: folders[0]["train"]})
    elif eval_file:
        raw = DatasetDict({split: load_file(eval_file)})
    else:
        # A search's trials trained without the test split; evaluating the chosen one on it is the point.
        # A --shots run's validation split, where carved from its training file, came from the examples not drawn.
        raw, _, _ = load_raw_datasets(dataclasses.replace(task.data, use_test_split=True), cfg["training"]["seed"],
                                      builtin=task.builtin_dataset, own=task.load_raw, others=task.builtin_datasets,
                                      per_class=task.draws_per_class)
        check(split in raw, f"The run's data has no {split!r} split (splits: {', '.join(sorted(raw))})"
              + (": it was trained without --test_file (peftkit carves a validation split out of a training file, "
                 "never a test split)" if split == "test" and (task.data.train_file or task.data.train_dir)
                 and not task.data.dataset_name else "")
              + f". Pass --split {' or --split '.join(s for s in sorted(raw) if s != 'train') or 'validation'}, "
              "or --eval_file with labelled data (image_cls: --test_dir with a folder).")
        raw = DatasetDict({split: raw[split]})
    task.check_known_labels(raw)
    return raw, task.preprocess(raw, processor)


def evaluate_run(run_dir: str | Path, data_overrides: dict[str, Any], split: str | None,
                 eval_file: str | None, eval_dir: str | None = None, trust: Trust = NO_TRUST) -> dict[str, float]:
    """Metrics of a trained run on ``eval_file`` (or image folder ``eval_dir``), or on ``split`` of its data (with
    overrides; None: ``default_split``)."""
    model, processor, cfg, task = load_run(run_dir, data_overrides, trust)
    split = split or ("test" if eval_file or eval_dir else default_split(cfg))
    raw, data = eval_data(task, cfg, processor, split, eval_file, eval_dir)
    acc = Accelerator()
    loader = eval_loader(data[split], cfg["training"].get("per_device_eval_batch_size", 64), task.collator(processor))
    model, loader = acc.prepare(model, loader)
    metrics = evaluate(acc, task, model, loader)
    final = task.final_evaluation(acc, model, processor, raw, None, "fine_tuned")
    return metrics | ({"final_evaluation": final} if final else {})


def predict(run_dir: str | Path, inputs: list[dict[str, Any]], trust: Trust = NO_TRUST) -> list[dict[str, Any]]:
    """The run's outputs for ``inputs`` (rows as the task's ``read_inputs`` gives them)."""
    cfg = read_config(run_dir)
    build_from_config(cfg, DataArguments(**cfg["data"])).check_inputs(inputs)  # before the model loads
    model, processor, _, task = load_run(run_dir, trust=trust)
    return task.predict(model, processor, inputs)


def predict_texts(run_dir: str | Path, texts: list[str], pairs: list[str] | None = None,
                  trust: Trust = NO_TRUST) -> list[dict[str, Any]]:
    """Label ``texts`` (and, for a sentence-pair run, their second texts ``pairs``) with a trained text run;
    probabilities included. Labels come back with the type training saw (integers stay integers)."""
    check(bool(texts), "No texts to label: the input was empty.")
    check(pairs is None or len(pairs) == len(texts), f"{len(texts)} texts but {len(pairs or [])} second texts.")
    rows = [{"text": t} for t in texts] if pairs is None else [{"text": t, "text_pair": p}
                                                               for t, p in zip(texts, pairs, strict=True)]
    return predict(run_dir, rows, trust)
