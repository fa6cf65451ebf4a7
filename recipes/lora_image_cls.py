"""LoRA for image classification: low-rank adapters on the backbone's linear layers and ordinary convolutions,
the new classifier trained fully; random horizontal flips; 3 epochs, as the classic recipe (pass
--num_train_epochs to choose, or leave it to peftkit with `peftkit train --task image_cls --strategy lora`).

    accelerate launch recipes/lora_image_cls.py                     # built-in EfficientNet-Lite0 on MNIST digits
    accelerate launch recipes/lora_image_cls.py --train_dir photos/ # one sub-folder of images per class
    python recipes/lora_image_cls.py --help                         # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main
from peftkit.tasks.image_cls import IMAGE_RECIPE

if __name__ == "__main__":
    raise SystemExit(train_main(task="image_cls", strategy="lora", prog="lora_image_cls.py",
                                defaults=IMAGE_RECIPE | {"augment": "flip"}))
