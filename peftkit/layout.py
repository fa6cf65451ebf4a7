"""The run directory's layout: the names of the files a run writes, which of a folder's entries peftkit owns
(and so may replace) and which it never touches, its checkpoints, its manifest, and durable writes.

One module for every command that reads or writes run directories (train, eval, predict, merge, search), light
enough to import without torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from peftkit import locks
from peftkit._version import __version__
from peftkit.assets import sha256_of

logger = logging.getLogger(__name__)
CONFIG_FILE = "peftkit_config.json"  # the resolved settings, the label space and the base's fingerprint
RESULTS_FILE = "results.json"  # written once training and the final evaluation are done
BEST_FILE = "best_trainable.safetensors"  # the best evaluation's trainable weights, until the run is saved
PREFIX = "checkpoint-"  # checkpoint-<step>
STATE = "trainer_state.json"  # inside a checkpoint, written last: a checkpoint without it is incomplete
BASELINE_FILE = "baseline.json"  # the untrained model's final evaluation, kept for a resumed run
PEFTKIT_FILES = (CONFIG_FILE, RESULTS_FILE, BEST_FILE, BASELINE_FILE, "adapter_config.json",
                 "adapter_model.safetensors", "model.safetensors", "config.json", "predictions.jsonl")
MANIFEST_FILE = "peftkit_manifest.json"  # the files a finished run wrote, with their sizes and sha256
REPLACED_DIR = ".peftkit_replaced"  # --overwrite_output_dir: the previous run, until the new one is saved
# What runs from before the manifest wrote (a run directory of theirs has peftkit_config.json): peftkit's own
# files, the tokenizer's and processor's files that save_pretrained writes, the model card, logs and analyses.
LEGACY_OWNED = re.compile(r"(peftkit_.*|results\.json|best_trainable\.safetensors|baseline\.json|adapter_.*|"
                          r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|config\.json|generation_config\.json|"
                          r"predictions\.jsonl|README\.md|tokenizer.*|special_tokens_map\.json|added_tokens\.json|"
                          r"vocab.*|merges\.txt|spiece\.model|sentencepiece.*|chat_template.*|"
                          r"preprocessor_config\.json|image_processor.*|merge_report\.json|logs|analysis_.*|"
                          r"checkpoint-\d+|\.checkpoint-\d+\.tmp)")


# What comes and goes in a run directory after its manifest is written: checkpoints (--keep_checkpoints, or an
# unfinished run's), tracker logs, `peftkit analyze`'s folders, and train.log (a search trial's or benchmark run's
# output, written before the run starts), and the contrastive stage's folder (--contrastive: until the run ends).
TRANSIENT = re.compile(r"logs|analysis_.*|checkpoint-\d+|\.checkpoint-\d+\.tmp|train\.log|peftkit_contrastive")


def owned_entries(output_dir: Path) -> set[str]:
    """The top-level names in ``output_dir`` that a peftkit run wrote: its manifest's (and TRANSIENT ones), or, for
    a run without a manifest (unfinished, or from before manifests), the names a run writes; none in a folder that
    holds no run."""
    if not output_dir.is_dir():
        return set()
    names = {p.name for p in output_dir.iterdir()}
    try:
        listed = {Path(f).parts[0] for f in json.loads((output_dir / MANIFEST_FILE).read_text())["files"]}
        return {n for n in names if n in listed or n == MANIFEST_FILE or TRANSIENT.fullmatch(n)}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    if (output_dir / CONFIG_FILE).is_file() or list_checkpoints(output_dir):
        return {n for n in names if LEGACY_OWNED.fullmatch(n)}
    return set()


def foreign_entries(output_dir: Path) -> list[str]:
    """What in ``output_dir`` peftkit did not write, and so never overwrites or deletes."""
    if not output_dir.is_dir():
        return []
    owned = owned_entries(output_dir) | {locks.LOCK_FILE, REPLACED_DIR}
    return sorted(n for n in (p.name for p in output_dir.iterdir()) if n not in owned and not TRANSIENT.fullmatch(n))


def existing_run(output_dir: Path) -> list[str]:
    found = [name for name in PEFTKIT_FILES if (output_dir / name).exists()]
    return found + [p.name for p in list_checkpoints(output_dir)]


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX}*"):
        match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / STATE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def set_aside(output_dir: Path) -> None:
    """--overwrite_output_dir, once the new run's data and model have loaded: move the previous run's files into
    REPLACED_DIR (renames within the folder), deleted when the new run is saved, put back if it fails first."""
    owned = sorted(owned_entries(output_dir))
    if not owned:
        return
    aside = output_dir / REPLACED_DIR
    shutil.rmtree(aside, ignore_errors=True)  # a previous failure's leftover
    aside.mkdir()
    for name in owned:
        os.replace(output_dir / name, aside / name)
    logger.info("--overwrite_output_dir: the previous run (%d files) is set aside in %s until this one is saved.",
                len(owned), aside)


def restore_aside(output_dir: Path) -> None:
    """After a failed run that replaced another (--overwrite_output_dir): the previous run comes back, unless the
    failed one left a checkpoint to resume from (an interruption, most often), which is then kept, with the previous
    run still set aside until it finishes."""
    aside = output_dir / REPLACED_DIR
    if not aside.is_dir():
        return
    if list_checkpoints(output_dir):
        logger.warning("This run can be resumed (--resume_from_checkpoint latest); the run it replaces stays in %s "
                       "until it finishes (delete that folder to drop it, or move its files back to keep it).", aside)
        return
    for name in owned_entries(output_dir):  # what the failed run wrote: its config, logs, best weights
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for entry in aside.iterdir():
        os.replace(entry, output_dir / entry.name)
    aside.rmdir()
    logger.warning("The run you asked to replace is back in %s, as it was.", output_dir)


def write_manifest(output_dir: Path) -> None:
    """Every file of the finished run with its size and sha256 (what later commands may check), written last and
    atomically: a run whose manifest is missing did not finish writing."""
    files = {}
    for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(output_dir)
        if rel.parts[0] in (locks.LOCK_FILE, REPLACED_DIR, MANIFEST_FILE) or rel.parts[0].startswith(".") \
                or TRANSIENT.fullmatch(rel.parts[0]):  # checkpoints and logs come and go
            continue
        files[rel.as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    atomic_write_text(output_dir / MANIFEST_FILE, json.dumps({"peftkit_version": __version__, "files": files},
                                                              indent=1))


def remove_checkpoints(output_dir: Path) -> None:
    for path in output_dir.iterdir():  # checkpoint-<step> and its temporary, not a user's checkpoint-foo
        if re.fullmatch(rf"\.?{PREFIX}\d+(\.tmp)?", path.name):
            shutil.rmtree(path, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all: a temporary file, fsynced, renamed over ``path``, and the directory
    fsynced so that the rename survives a crash. A full disk leaves the old file (or none), never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (where the system allows opening and syncing a directory; where
    it does not, the renamed file itself is still whole)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
