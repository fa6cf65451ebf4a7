"""The route a user takes for image classification without peftkit: stock transformers `Trainer` + peft LoRA on
an image folder, as transformers' run_image_classification example does it.

    python benchmarks/reference_image.py --data_dir D --output_dir O --model_name_or_path M \
        --learning_rate 2e-3 --num_train_epochs 5 --per_device_train_batch_size 32 --augment flip --seed 42

Reads D/{train,validation,test}/<class>/*.png written by the suite (`datasets`' imagefolder builder), preprocesses
with the model's AutoImageProcessor, augments the training images with torchvision's RandomHorizontalFlip in
`set_transform` (drawn from the global generator, as the example does), trains LoRA (r=8, alpha=16, dropout 0.1)
on the layers peftkit's lora adapts for this model (given as --target_modules, since peft has no default for a
CNN) with the classifier in modules_to_save and the same hyper-parameters as peftkit's lora strategy, keeps the
best epoch by validation accuracy and writes O/results.json with the keys the suite reads. It imports nothing from
peftkit. Frozen batch norm layers are left as the Trainer leaves them (training mode: their running statistics
follow the training batches and are not saved with the adapter), which is what the stock route does.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch
from reference_common import StepTimer, parser, peak_memory_bytes, resident_bytes, training_settings
from transformers import Trainer, TrainingArguments

from peftkit.metrics import macro_f1


def main() -> int:
    ap = parser(__doc__.splitlines()[0], epochs=5, batch=32, eval_batch=64, max_seq_length=0)
    ap.add_argument("--augment", default="flip", choices=["none", "flip"])
    ap.add_argument("--target_modules", nargs="+", required=True)
    args = ap.parse_args()

    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from torchvision.transforms import v2
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data_dir = Path(args.data_dir)
    raw = load_dataset("imagefolder", data_dir=str(data_dir))
    labels = raw["train"].features["label"].names
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    flip = v2.RandomHorizontalFlip() if args.augment == "flip" else None

    def transform(train: bool):
        def apply(batch):
            images = [im.convert("RGB") for im in batch["image"]]
            if train and flip is not None:
                images = [flip(im) for im in images]
            return {"pixel_values": processor(images=images, return_tensors="pt")["pixel_values"],
                    "labels": batch["label"]}
        return apply

    raw["train"].set_transform(transform(True))
    for split in ("validation", "test"):
        raw[split].set_transform(transform(False))
    model = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True, dtype=torch.float32)
    head = [n for n, m in model.named_modules() if m is model.timm_model.get_classifier()] \
        if hasattr(model, "timm_model") else ["classifier"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=args.target_modules, modules_to_save=head))
    loaded = resident_bytes()

    def compute_metrics(pred):
        guess, truth = np.argmax(pred.predictions, -1), pred.label_ids
        return {"accuracy": float((guess == truth).mean()), "f1": macro_f1(guess, truth)}  # as peftkit reports it

    def collate(rows):
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows])}

    timer = StepTimer()
    training_args = TrainingArguments(**training_settings(args), metric_for_best_model="accuracy", logging_steps=10,
                                      remove_unused_columns=False, disable_tqdm=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=raw["train"], eval_dataset=raw["validation"],
                      data_collator=collate, compute_metrics=compute_metrics, callbacks=[timer])
    train_metrics = trainer.train().metrics
    test = trainer.evaluate(raw["test"], metric_key_prefix="test")
    model.save_pretrained(args.output_dir)
    results = {
        "strategy": "reference",
        "test": {"accuracy": test["test_accuracy"], "f1": test["test_f1"], "loss": test["test_loss"]},
        "train_runtime_s": train_metrics["train_runtime"],
        "train_samples_per_s": train_metrics["train_samples_per_second"],
        "train_tokens_per_s": None,
        "step_time_median_s": statistics.median(timer.times) if timer.times else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_memory_bytes": int(peak_memory_bytes()), "loaded_memory_bytes": loaded,
    }
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"reference: test accuracy {results['test']['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
