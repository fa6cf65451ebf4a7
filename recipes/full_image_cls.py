"""The classic vision fine-tune: a pretrained ImageNet CNN, a new final layer for your classes, every weight trains
with SGD (momentum 0.9) and a step learning-rate schedule, random horizontal flips, and the weights of the best
validation epoch kept.

    accelerate launch recipes/full_image_cls.py                     # built-in EfficientNet-Lite0 on MNIST digits
    accelerate launch recipes/full_image_cls.py --train_dir photos/ # one sub-folder of images per class
    python recipes/full_image_cls.py --help                         # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main
from peftkit.tasks.image_cls import CLASSIC_RECIPE

if __name__ == "__main__":
    raise SystemExit(train_main(task="image_cls", strategy="full", prog="full_image_cls.py", defaults=CLASSIC_RECIPE))
