"""Base-model identity: a cheap fingerprint of a model's config and weight files.

Every run records the fingerprint of the base it was trained on, so that merging (or loading) an adapter
onto a different base is refused instead of silently producing a wrong model. Hashing every byte of a
multi-GB checkpoint would take minutes, so the fingerprint reads the parts that differ between models: the
architecture fields of the config, each safetensors header (tensor names, shapes, dtypes, offsets), the
file size, and a 1 MiB window from the start, middle and end of the tensor data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

WINDOW = 1 << 20
# Config fields that run-specific settings (labels, dtype, quantization) change; they are not the base.
VOLATILE = {"id2label", "label2id", "num_labels", "torch_dtype", "dtype", "quantization_config",
            "transformers_version", "_name_or_path", "architectures", "problem_type", "pad_token_id"}


def model_directory(name_or_path: str) -> Path | None:
    """The local directory holding a model: the path itself, or its Hub cache snapshot when present."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached locally: no fingerprint rather than a network call
        return None


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0] if path.suffix == ".safetensors" else 0
        digest.update(fh.read(min(header_len, 100_000_000)))
        for offset in (8 + header_len, max(0, size // 2 - WINDOW // 2), max(0, size - WINDOW)):
            fh.seek(offset)
            digest.update(fh.read(WINDOW))


def fingerprint(name_or_path: str) -> str | None:
    """sha256 over the base's architecture config and weight files; None if its files are not local."""
    directory = model_directory(name_or_path)
    if directory is None or not (directory / "config.json").is_file():
        return None
    config = json.loads((directory / "config.json").read_text())
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in VOLATILE},
                                       sort_keys=True).encode())
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    for path in weights:
        _file_digest(path, digest)
    return digest.hexdigest()
