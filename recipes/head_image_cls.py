"""Feature extraction for images: the pretrained backbone is frozen and only the new classifier trains. Without
augmentation (the default here) the backbone runs once and its features are cached; with --augment it runs on
every batch, since the images change each epoch; a timm model (the built-in one) keeps its classifier inside the
backbone, so its frozen backbone runs on every batch either way. 3 epochs, as the classic recipe.

    accelerate launch recipes/head_image_cls.py                     # built-in EfficientNet-Lite0 on MNIST digits
    accelerate launch recipes/head_image_cls.py --train_dir photos/ # one sub-folder of images per class
    python recipes/head_image_cls.py --help                         # every flag, with its default

Flags may also come from a YAML/JSON file: --config my_run.yaml (flags on the command line win).
"""

from peftkit.cli import train_main
from peftkit.tasks.image_cls import IMAGE_RECIPE

if __name__ == "__main__":
    raise SystemExit(train_main(task="image_cls", strategy="head", prog="head_image_cls.py", defaults=IMAGE_RECIPE))
