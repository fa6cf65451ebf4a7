"""Training checkpoints: everything needed to continue a run exactly, written whole or not at all.

A checkpoint is ``output_dir/checkpoint-<step>/`` holding

- ``trainable.safetensors``: the trainable weights (the adapter and head, or every weight for full training);
- ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict()``s (tensors and numbers only, so they load
  with ``torch.load(weights_only=True)``: nothing is unpickled);
- ``rng_state.safetensors``: each process's torch (and CUDA) generator and the data-order generator as it
  was when the epoch began;
- ``best_trainable.safetensors``: the best evaluation's weights so far (a hard link where the disk allows);
- ``trainer_state.json``: the :class:`~peftkit.train_state.TrainState` (step, epoch, batches consumed in the
  epoch, best metric, histories, counters) and the Python and NumPy generator states. Written last: a
  directory without it is not a checkpoint.

It is built in a hidden ``.checkpoint-<step>.tmp`` directory and renamed into place, so a crash, a kill or
a full disk leaves the previous checkpoints untouched and never a half-written "latest".
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from peftkit.assets import sha256_of
from peftkit.distributed import gather_objects, gather_trainable, on_main
from peftkit.errors import PeftkitError, check, is_write_failure, write_failure
from peftkit.layout import BEST_FILE, PREFIX, STATE, fsync_dir, list_checkpoints
from peftkit.train_state import BestWeights, TrainState

logger = logging.getLogger(__name__)

WEIGHTS, OPTIMIZER, SCHEDULER = "trainable.safetensors", "optimizer.pt", "scheduler.pt"
RNG, BEST = "rng_state.safetensors", BEST_FILE


def resolve(output_dir: Path, which: str) -> Path:
    """``latest`` or a path, checked to be a complete checkpoint."""
    if which == "latest":
        found = list_checkpoints(output_dir)
        check(bool(found), f"--resume_from_checkpoint latest: {str(output_dir)!r} holds no checkpoint. Checkpoints "
              "are written every --save_steps steps and at the end of each epoch; start without "
              "--resume_from_checkpoint.")
        for path in reversed(found):  # the newest that verifies
            bad = damaged_files(path)
            if not bad:
                return path
            logger.warning("Checkpoint %s is damaged (%s: not as written); trying the one before it.", path,
                           ", ".join(bad))
        raise PeftkitError(f"--resume_from_checkpoint latest: every checkpoint in {str(output_dir)!r} is damaged "
                           f"({_names(output_dir)}). Start again with --overwrite_output_dir.")
    path = Path(which)
    check(path.is_dir(), f"--resume_from_checkpoint {which!r}: no such directory. Pass `latest` or a "
          f"{PREFIX}<step> directory inside --output_dir.")
    check((path / STATE).is_file(), f"{which!r} is not a complete checkpoint (no {STATE}): it was cut short or is "
          f"not a checkpoint. Available: {_names(path.parent)}.")
    return path


def _names(output_dir: Path) -> str:
    return ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"


def rng_states(epoch_generator_state: torch.Tensor | None) -> dict[str, Any]:
    """This process's random generators, as tensors (safetensors) and a JSON-able dict."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    if epoch_generator_state is not None:
        tensors["data_epoch_start"] = epoch_generator_state
    np_state = np.random.get_state()
    py_state = random.getstate()
    extra = {"python": [py_state[0], list(py_state[1]), py_state[2]],
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return {"tensors": tensors, "json": extra}


def restore_rng(tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda")), key=lambda k: int(k[4:]))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = extra["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = extra["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def write(output_dir: Path, step: int, weights: dict[str, torch.Tensor], optimizer_state: dict,
          scheduler_state: dict, rng_per_process: list[dict[str, Any]], state: dict[str, Any]) -> Path:
    """Write checkpoint-<step> whole (main process only), then rename it into place."""
    final = Path(output_dir) / f"{PREFIX}{step}"
    tmp = Path(output_dir) / f".{PREFIX}{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights, str(tmp / WEIGHTS))
        torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(scheduler_state, tmp / SCHEDULER)
        rng_tensors = {f"rank{r}.{k}": v for r, s in enumerate(rng_per_process) for k, v in s["tensors"].items()}
        save_file(rng_tensors, str(tmp / RNG))
        BestWeights(output_dir).copy_into(tmp)
        share_files(tmp)
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        # the digests of what was written (read back from disk), checked on resume: STATE, written last, marks
        # the checkpoint complete
        state = state | {"rng": [s["json"] for s in rng_per_process], "num_processes": len(rng_per_process),
                         "files": {p.name: sha256_of(p) for p in sorted(tmp.iterdir())}}
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        with open(tmp / STATE, "rb") as fh:
            os.fsync(fh.fileno())
        old = None
        if final.exists():  # the same step saved again (after a resume): replaced only once the new one is whole
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def damaged_files(path: Path) -> list[str]:
    """The files of checkpoint ``path`` whose sha256 differs from the one recorded when it was written (or that
    are missing); empty for an intact checkpoint, or one from before digests were recorded."""
    try:
        recorded = json.loads((path / STATE).read_text()).get("files") or {}
    except (OSError, ValueError) as exc:
        return [f"{STATE} ({type(exc).__name__})"]
    return [name for name, digest in recorded.items()
            if not (path / name).is_file() or sha256_of(path / name) != digest]


def rotate(output_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Delete the oldest checkpoints beyond ``keep`` (0 = keep all)."""
    if keep <= 0:
        return
    found = list_checkpoints(output_dir)
    for path in found[:-keep]:
        if path != protect:
            shutil.rmtree(path, ignore_errors=True)


def load(path: Path, rank: int) -> dict[str, Any]:
    """Read a checkpoint, refusing a damaged one with a message that names the file and what to do."""
    bad = damaged_files(path)
    if bad:
        others = [p.name for p in list_checkpoints(path.parent) if p != path]
        raise PeftkitError(
            f"Checkpoint {str(path)!r} is damaged: {', '.join(bad)} differ from what was written (sha256). Resume "
            f"from another one with --resume_from_checkpoint {path.parent}/<name> (available: "
            f"{', '.join(others) or 'none'}), or `latest`, which takes the newest intact one.")
    try:
        state = json.loads((path / STATE).read_text())
        weights = load_file(str(path / WEIGHTS))
        optimizer = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
        scheduler = torch.load(path / SCHEDULER, map_location="cpu", weights_only=True)
        rng_all = load_file(str(path / RNG))
    except Exception as exc:  # noqa: BLE001 - whatever the damage (truncation, garbage, a refused pickle)
        others = [p.name for p in list_checkpoints(path.parent) if p != path]
        raise PeftkitError(
            f"Checkpoint {str(path)!r} is corrupt or truncated ({type(exc).__name__}: {str(exc)[:160]}). Resume from "
            f"another one with --resume_from_checkpoint {path.parent}/<name> (available: {', '.join(others) or 'none'})"
            ", or start again with --overwrite_output_dir.") from exc
    check(state.get("num_processes") is not None and rank < state["num_processes"],
          f"Checkpoint {str(path)!r} was written by {state.get('num_processes')} process(es); resume with the same "
          "number of processes (the data order and global batch depend on it).")
    prefix = f"rank{rank}."
    rng = {k[len(prefix):]: v for k, v in rng_all.items() if k.startswith(prefix)}
    best = BestWeights.read_from(path)
    return {"state": state, "weights": weights, "optimizer": optimizer, "scheduler": scheduler,
            "rng": rng, "rng_json": state["rng"][rank], "best": best}


WEIGHT_FILE = re.compile(r"(adapter_)?model(-\d+-of-\d+)?\.safetensors")


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (a moment of umask 0 would apply to
    files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # elsewhere: the briefest change, and to the strictest mask, not 0
    os.umask(umask)
    return umask


def share_files(directory: Path) -> None:
    """Give the weight files peftkit writes the permissions the user's umask asks for. safetensors (0.8) writes
    through a private temporary file and leaves its output 0600, which a server running as another user cannot
    read. Only peftkit's own weight files (``WEIGHT_FILE``) are touched, not other .safetensors in the folder."""
    mode = 0o666 & ~current_umask()
    for path in Path(directory).glob("*.safetensors"):
        if WEIGHT_FILE.fullmatch(path.name) and stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


def save(acc, output_dir: Path, keep: int, model, trainable: set[str], optimizer, scheduler,
         state: TrainState, epoch_start_rng: torch.Tensor) -> Path:
    """Checkpoint the training state. Every process takes part (gathering weights and RNG states); the main one
    writes. A failed write (a full disk, most often) stops every process with one message; all get the path."""
    weights = gather_trainable(acc, model, trainable)
    rngs = gather_objects(acc, rng_states(epoch_start_rng))

    def write_and_rotate() -> Path:
        try:
            path = write(output_dir, state.step, weights, optimizer.state_dict(), scheduler.state_dict(), rngs,
                         state.to_json())
        except Exception as exc:  # noqa: BLE001 - torch.save and safetensors report a full disk their own ways
            if not is_write_failure(exc):
                raise
            earlier = list_checkpoints(output_dir)
            raise write_failure(exc, output_dir, f"the checkpoint of step {state.step}",
                                "Nothing was half-written and earlier checkpoints are intact "
                                f"({earlier[-1].name if earlier else 'none yet'}): rerun with "
                                "--resume_from_checkpoint latest once there is room.") from exc
        rotate(output_dir, keep, protect=path)
        logger.info("Checkpoint saved: %s", path)
        return path

    return on_main(acc, write_and_rotate)


def restore(acc, path: Path, output_dir: Path, model, trainable: set[str], optimizer,
            scheduler, metric: str | None = None) -> tuple[TrainState, dict]:
    """Put weights, optimizer, scheduler and the best-so-far back as they were at ``path``; return the training
    state then and the checkpoint (for its random generator states). ``metric``: the selection metric
    (``TrainState.from_json``)."""
    ckpt = load(path, acc.process_index)
    missing = sorted(trainable - set(ckpt["weights"]))
    check(not missing, f"Checkpoint {str(path)!r} lacks trainable weights of this model (e.g. {missing[:3]}): it "
          "was written for another model or strategy.")
    acc.unwrap_model(model).load_state_dict(ckpt["weights"], strict=False)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise PeftkitError(f"Checkpoint {str(path)!r} does not fit this run's optimizer ({exc}).") from exc
    if acc.is_main_process:  # the best weights as they were then, not what a later step may have written
        BestWeights(output_dir).restore(ckpt["best"])
    acc.wait_for_everyone()
    return TrainState.from_json(ckpt["state"], metric), ckpt
