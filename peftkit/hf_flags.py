"""Flags of transformers' ``Trainer`` that users type by habit: mapped onto peftkit's, or refused with what to
use instead. Real flags of the same name (``--warmup_steps``, ``--logging_dir``, ``--dataloader_num_workers``)
live in the config schema; this module holds only those whose meaning differs."""

from __future__ import annotations

import difflib
from typing import Any

from peftkit.errors import PeftkitError

FLAG_BOOLS = {"fp16", "bf16", "do_train", "do_eval", "do_predict", "push_to_hub", "load_best_model_at_end"}
HF_FLAGS = FLAG_BOOLS | {"optim", "eval_strategy", "evaluation_strategy", "save_strategy", "hub_model_id",
                         "hub_token"}
OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
              "sgd": "sgd", "adam": "adam", "rmsprop": "rmsprop"}
TRUE, FALSE = {"true", "yes", "1", "y", "t"}, {"false", "no", "0", "n", "f"}


def translate(name: str, value: Any, given: set[str]) -> dict[str, Any]:
    """peftkit settings for one Trainer flag (empty: nothing to do), or a PeftkitError saying what to use.

    ``given`` holds the peftkit flags already set, for the checks that depend on them."""
    if name in FLAG_BOOLS and not value:
        return {}
    if name in ("fp16", "bf16"):
        return {"mixed_precision": name}
    if name == "optim":
        if value not in OPTIMIZERS:
            raise PeftkitError(f"--optim {value}: peftkit trains with adamw, adam, sgd or rmsprop; pass "
                               "--optimizer with one of them.")
        return {"optimizer": OPTIMIZERS[value]}
    if name in ("eval_strategy", "evaluation_strategy"):
        if value == "epoch":
            return {"eval_every_epochs": 1}
        if value == "steps":
            if "eval_steps" in given:
                return {}
            raise PeftkitError(f"--{name} steps needs --eval_steps N (peftkit evaluates at epoch ends, see "
                               "--eval_every_epochs, and also every N optimizer steps with --eval_steps N).")
        raise PeftkitError(f"--{name} {value}: peftkit always evaluates on the validation split at epoch ends "
                           "(--eval_every_epochs), to keep the best weights; add --eval_steps N to evaluate more "
                           "often.")
    if name == "save_strategy":
        table = {"no": {"save_steps": -1}, "epoch": {"save_steps": 0}, "steps": {}}
        if value not in table:
            raise PeftkitError(f"--save_strategy {value}: use --save_steps N (every N steps and at epoch ends), 0 "
                               "(epoch ends only) or -1 (never). The best weights are always what the run saves.")
        return table[value]
    if name in ("do_train", "do_eval", "do_predict", "load_best_model_at_end"):
        return {}  # what a peftkit run always does: train, select on validation, report test
    raise PeftkitError(f"--{name}: peftkit does not upload to the Hub. The run directory is a save_pretrained "
                       "directory: upload it with `hf upload REPO_ID RUN_DIR` (huggingface_hub), after `peftkit "
                       "merge` if you want a plain transformers model.")


# A number flag that also takes "auto": the value becomes a switch of its own (--per_device_train_batch_size auto:
# --auto_batch_size, the largest micro-batch that fits, see runner._plan).
AUTO_VALUES = {"per_device_train_batch_size": "auto_batch_size"}


def rewrite_argv(argv: list[str]) -> list[str]:
    """``argv`` with Trainer flags replaced by peftkit's (e.g. ``--fp16`` -> ``--mixed_precision fp16``), and
    ``--per_device_train_batch_size auto`` by ``--auto_batch_size``."""
    given = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        name = token[2:].split("=", 1)[0] if token.startswith("--") else None
        if name in AUTO_VALUES:
            value = token.split("=", 1)[1] if "=" in token else argv[i + 1] if i + 1 < len(argv) else ""
            if value.lower() == "auto":
                out.append(f"--{AUTO_VALUES[name]}")
                i += 1 if "=" in token else 2
                continue
        if name not in HF_FLAGS:
            out.append(token)
            i += 1
            continue
        if "=" in token:
            value, i = token.split("=", 1)[1], i + 1
        elif name in FLAG_BOOLS:
            following = argv[i + 1].lower() if i + 1 < len(argv) else ""
            explicit = following in TRUE | FALSE
            value, i = (following in TRUE) if explicit else True, i + (2 if explicit else 1)
        else:
            if i + 1 >= len(argv):
                raise PeftkitError(f"--{name} needs a value.")
            value, i = argv[i + 1], i + 2
        if isinstance(value, str) and name in FLAG_BOOLS:
            value = value.lower() in TRUE
        for key, new in translate(name, value, given).items():
            out += [f"--{key}", str(new)]
    return out


def rewrite_config(values: dict[str, Any]) -> dict[str, Any]:
    """A config file's keys, with Trainer keys replaced as on the command line."""
    given = set(values)
    out = {k: v for k, v in values.items() if k not in HF_FLAGS}
    for key, switch in AUTO_VALUES.items():
        if str(out.get(key, "")).lower() == "auto":
            del out[key]
            out[switch] = True
    for key in values.keys() & HF_FLAGS:
        out.update(translate(key, values[key], given))
    return out


def suggest(unknown: list[str], known: list[str]) -> str:
    """' Did you mean --x?' for the first unknown flag with a close known one."""
    for token in unknown:
        if token.startswith("--"):
            close = difflib.get_close_matches(token[2:].split("=", 1)[0], known, n=1, cutoff=0.75)
            if close:
                return f" Did you mean --{close[0]}?"
    return ""
