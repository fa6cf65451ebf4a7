"""Image classification: any transformers vision model (ViT, ConvNeXt, ResNet, Swin, ...) or a timm model through
transformers' TimmWrapper, a new head for the user's classes, seeded augmentation of the training images."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from datasets import ClassLabel, DatasetDict, Image
from torch import nn
from transformers import AutoModelForImageClassification

from peftkit.data import check_columns, load_file
from peftkit.errors import PeftkitError, check
from peftkit.modeling import backbone, resolve_model_path, source_kwargs
from peftkit.tasks.classification import SingleLabelClassification
from peftkit.tasks.flags import ImageClsFlags
from peftkit.tasks.image_data import (
    AUGMENT_KEY,
    IMAGE_SUFFIXES,
    Augmenter,
    ImageCollator,
    builtin_mnist,
    check_images,
    load_image_dir,
    open_image,
    pixel_values,
    processor_size,
    resolve_paths,
)

logger = logging.getLogger(__name__)
IMAGE = "image"  # the image column's name once preprocessed
# recipes/full_image_cls.py: the classic fine-tune of a pretrained CNN (as in PyTorch's transfer-learning
# tutorial): SGD with momentum 0.9 and no weight decay, a step schedule (the rate cut tenfold after 2 of 3 epochs),
# horizontal flips; the best validation epoch's weights are kept, as in every peftkit run. The rate was chosen on
# the built-in digits (1,000 images, batch 16 as derived, seed 42, 2026-11-27): validation accuracy 0.94 after
# the cut (0.53 and 0.63 before it, at 0.1); without a cut, 3 epochs of 320 images reached 0.88 at 0.1, 0.84 at
# 0.05 and 0.41 at 0.01.
# The image recipes train 3 epochs: a CNN's forward and backward pass over an image costs far more on a CPU than a
# sentence's (the built-in EfficientNet-Lite0 at 224x224: about 10 training images a second on 2 cores), and the
# derived 5 epochs of LoRA on the 1,000 built-in digits took 13 minutes there (test accuracy 0.966).
IMAGE_RECIPE = {"num_train_epochs": 3}
CLASSIC_RECIPE = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0, "learning_rate": 0.1,
                  "lr_scheduler_type": "step", "lr_step_size": 2, "lr_gamma": 0.1, "warmup_ratio": 0.0,
                  "num_train_epochs": 3, "augment": "flip"}


@dataclass
class ImageClassification(ImageClsFlags, SingleLabelClassification):
    """One label per image; classes are discovered from the data (folder names, or a label column)."""
    name: ClassVar[str] = "image_cls"
    auto_class: ClassVar[type] = AutoModelForImageClassification
    peft_task_type: ClassVar[str | None] = None  # peft has no image task type: a plain PeftModel
    kind: ClassVar[str] = "image-classification head"
    pipeline_tag: ClassVar[str] = "image-classification"
    example_noun: ClassVar[str] = "image"
    single_class_hint: ClassVar[str] = " With --train_dir, give each class its own sub-folder."
    builtin_dataset = staticmethod(builtin_mnist)

    def __post_init__(self) -> None:
        Augmenter(self.augment, 1)  # checks the name
        super().__post_init__()
        self.data = None

    # -- data -------------------------------------------------------------------------------------
    def load_raw(self, data_args) -> tuple[DatasetDict, str] | None:
        """Image folders (--train_dir ...), or None for the generic loaders (files, Hub, built-in)."""
        dirs = {"train": data_args.train_dir, "validation": data_args.validation_dir, "test": data_args.test_dir}
        if not data_args.train_dir:
            check(not data_args.validation_dir and not data_args.test_dir,
                  "--validation_dir / --test_dir need --train_dir (a folder of class sub-folders) too.")
            return None
        check(not data_args.train_file and not data_args.dataset_name,
              "Pass one source of training images: --train_dir, --train_file or --dataset_name.")
        raw = DatasetDict({s: load_image_dir(d, IMAGE, data_args.label_column) for s, d in dirs.items() if d})
        return raw, Path(data_args.train_dir).name

    def _column(self, raw: DatasetDict) -> str:
        """The image column: ``image`` for folders and the built-in data, --image_column otherwise."""
        some = next(iter(raw.values()))
        return IMAGE if self.image_column not in some.column_names and IMAGE in some.column_names else \
            self.image_column

    def input_columns(self, raw: DatasetDict) -> dict[str, str | None]:
        return {"image_column": self._column(raw)}

    def class_names(self, feature, values: list[Any]) -> list[Any]:
        """A ClassLabel column (the built-in digits, Hub datasets) names every class, also those a
        --max_train_samples subset happens to miss; evaluation data holding them is then not refused."""
        return list(feature.names) if isinstance(feature, ClassLabel) else sorted(set(values))

    def model_kwargs(self) -> dict[str, Any]:
        return super().model_kwargs() | {"ignore_mismatched_sizes": True}

    def new_modules(self, model) -> list[str]:
        """The classifier: transformers' own (``classifier``) or, inside a timm model, the one timm names."""
        inner = getattr(model, "timm_model", None)
        if inner is not None and hasattr(inner, "get_classifier"):
            head = inner.get_classifier()
            return [f"timm_model.{n}" for n, m in inner.named_modules() if m is head]
        return super().new_modules(model)

    def load_processor(self, source):
        from transformers import AutoImageProcessor

        from peftkit.config import ModelArguments

        path = resolve_model_path(source.model_name_or_path) if isinstance(source, ModelArguments) else str(source)
        run_config = Path(path) / "peftkit_config.json"
        if not any((Path(path) / f).is_file() for f in ("preprocessor_config.json", "config.json")) and \
                run_config.is_file():
            # An adapter run of a timm model: its processor settings live in the base's config.json
            path = resolve_model_path(json.loads(run_config.read_text())["model"]["model_name_or_path"])
        if "timm" in _model_type(path):
            from peftkit.assets import need_vision_packages

            need_vision_packages("A timm model")
        try:
            return AutoImageProcessor.from_pretrained(path, **source_kwargs(path))
        except Exception as exc:  # noqa: BLE001
            raise PeftkitError(f"Cannot load an image processor from {path!r}: {str(exc).splitlines()[0][:200]}. "
                               "The model directory needs a preprocessor_config.json.") from exc

    def preprocess(self, raw: DatasetDict, processor) -> DatasetDict:
        """Check every image once (refused or skipped here, never mid-epoch); keep the images as they are (paths or
        encoded), with label ids; training examples get their index, which seeds their augmentation."""
        column, label2id = self._column(raw), self.label2id
        out = DatasetDict()
        for split, ds in raw.items():
            if not isinstance(ds.features.get(column), Image) and self.data.train_file and ds.column_names and \
                    isinstance(ds[0][column], str):
                ds = resolve_paths(ds, column, self._file_dir(split))
            ds = check_images(ds, column, split, self.skip_bad_images)
            labels = [label2id[str(v)] for v in self._label_values(ds)]
            keep = ds.select_columns([column]).rename_columns({column: IMAGE} if column != IMAGE else {})
            keep = keep.add_column("labels", labels)
            if split == "train":
                keep = keep.add_column(AUGMENT_KEY, list(range(len(keep))))
            out[split] = keep
        return out

    def _file_dir(self, split: str) -> Path:
        path = {"train": self.data.train_file, "validation": self.data.validation_file,
                "test": self.data.test_file}.get(split) or self.data.train_file
        return Path(path).resolve().parent

    def example_batch(self, batch_size: int, length: int, config) -> dict[str, torch.Tensor]:
        """Images at the model's input size (the planner's batch; ``length`` does not apply)."""
        size = getattr(config, "image_size", None) or (getattr(config, "pretrained_cfg", None) or {}).get(
            "input_size", (3, 224, 224))[-1]
        return {"pixel_values": torch.zeros(batch_size, 3, size, size, device="meta"),
                "labels": torch.zeros(batch_size, dtype=torch.long, device="meta")}

    def collator(self, processor):
        augmenter = Augmenter(self.augment, processor_size(processor)) if self.augment != "none" else None
        return ImageCollator(processor, IMAGE, augmenter, seed=0)  # the engine gives it the run's seed

    def prepare_model(self, model, model_dir: str | None = None) -> dict[str, Any]:
        """Batch norm layers whose weights do not train keep their running statistics (eval mode, also while
        training): the frozen base of head, partial and LoRA runs then computes what it computed before training,
        and what an adapter run saves (adapter and head) describes the model exactly."""
        frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and not any(p.requires_grad for p in m.parameters(recurse=False))]
        for module in frozen:
            module.register_forward_pre_hook(_keep_eval)
        if model_dir is not None and frozen:
            logger.info("%d batch norm layers with frozen weights keep their running statistics.", len(frozen))
        return {}

    def start_epoch(self, collator, epoch: int, seed: int) -> None:
        """Each example's augmentation draws follow (run seed, epoch, example)."""
        collator.set_epoch(epoch, seed=seed)

    def features_fixed(self) -> bool:
        """A frozen backbone sees the same training images every epoch only without augmentation."""
        return self.augment == "none"

    def lora_targets(self, model: nn.Module, head_names: list[str]) -> list[str] | None:
        """What LoRA adapts when --lora_target_modules is not given: peft's choice where it has one (it has none for
        vision models in peft 0.21), otherwise every linear layer and every ordinary convolution (groups 1, no
        dynamic padding) of the backbone: a ViT's attention and MLP layers and patch embedding, a CNN's 1x1 and
        ordinary convolutions. Depthwise convolutions are left out (one filter per channel: nothing low-rank to
        learn), and timm's dynamically padded convolutions too (peft's LoRA convolution would pad differently)."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        if getattr(model.config, "model_type", None) in PEFT_DEFAULTS:
            return None
        body = backbone(model)
        prefix = getattr(model, "base_model_prefix", "")
        heads = [h.removeprefix(f"{prefix}.") for h in head_names]
        names = [f"{prefix}.{n}" for n, m in body.named_modules()
                 if (isinstance(m, nn.Linear) or type(m) is nn.Conv2d) and getattr(m, "groups", 1) == 1
                 and not any(n == h or n.startswith(f"{h}.") for h in heads)]
        check(bool(names), f"{type(model).__name__} has no linear or ordinary convolution layers for LoRA to adapt; "
              "name some with --lora_target_modules.")
        kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
        logger.info("LoRA adapts %d layers of %s (linear and non-depthwise convolutions: %s); "
                    "--lora_target_modules chooses others.", len(names), type(model).__name__, ", ".join(kinds))
        return names

    # -- using a trained run ----------------------------------------------------------------------
    def read_inputs(self, path: str | None, columns: dict[str, str | None]) -> list[dict[str, str]]:
        """Image paths: a folder (every image in it and its sub-folders), one image file, a .txt list of paths
        (one per line; stdin the same), or a CSV/JSON file with an image column (paths relative to it)."""
        from peftkit.data import read_lines

        if path not in (None, "-") and Path(path).is_dir():
            files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            check(bool(files), f"Folder {path!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            return [{"image": str(p)} for p in files]
        if path not in (None, "-") and Path(path).suffix.lower() in IMAGE_SUFFIXES:
            check(Path(path).is_file(), f"Image {path!r} does not exist. Check the path.")
            return [{"image": path}]
        lines = read_lines(path)
        if lines is not None:
            return [{"image": line.strip()} for _, line in lines]
        ds = load_file(path)
        column = columns.get("text_column") or self.image_column
        check_columns(DatasetDict({"input": ds}), {"image_column": column})
        ds = resolve_paths(ds, column, Path(path).resolve().parent)
        return [{"image": p} for p in ds[column]]

    def check_inputs(self, inputs: list[dict[str, Any]]) -> None:
        check(bool(inputs), "No images to label: the input was empty.")
        missing = [row["image"] for row in inputs if isinstance(row.get("image"), str)
                   and not Path(row["image"]).is_file()]
        check(not missing, f"{len(missing)} image path(s) do not exist: {', '.join(missing[:5])}. Check the paths.")

    @torch.no_grad()
    def predict(self, model, processor, inputs: list[dict[str, Any]], batch_size: int = 32) -> list[dict[str, Any]]:
        """The label and class probabilities of each image; an unreadable image gets an error instead."""
        self.check_inputs(inputs)
        device = next(p.device for p in model.parameters())
        out: list[dict[str, Any]] = []
        for i in range(0, len(inputs), batch_size):
            chunk, images, readable = inputs[i:i + batch_size], [], []
            for row in chunk:
                try:
                    images.append(open_image(row["image"]))
                    readable.append(row)
                except Exception as exc:  # noqa: BLE001 - one bad file must not lose the others' answers
                    out.append({**row, "error": f"cannot read the image: {str(exc).splitlines()[0][:120]}"})
            if not images:
                continue
            logits = model(pixel_values=pixel_values(processor, images).to(device)).logits
            out += self.probability_rows(readable, logits)
        return out


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False


def _model_type(path: str) -> str:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return ""

