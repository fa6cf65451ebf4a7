"""Shared fixtures: tiny models built from configs (no network), the built-in tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import IMAGE_SIZE as SIZE  # noqa: E402
from helpers import make_photo_folder  # noqa: E402

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=64, initializer_range=0.5)  # large init: one step moves every tensor


def tiny_config(arch: str):
    from transformers import BertConfig, LlamaConfig

    if arch == "bert":
        return BertConfig(vocab_size=120, **TINY)
    return LlamaConfig(vocab_size=120, num_key_value_heads=2, pad_token_id=0, **TINY)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch)``: a saved tiny pretrained-style model directory (bert or llama)."""
    from transformers import AutoModel

    cache: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in cache:
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp(f"tiny_{arch}")
            AutoModel.from_config(tiny_config(arch)).save_pretrained(path)
            cache[arch] = str(path)
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def builtin_model_dir() -> str:
    from peftkit.assets import builtin_model_path

    return str(builtin_model_path())


@pytest.fixture(scope="session")
def builtin_lm_dir() -> str:
    """The built-in SmolLM2-135M-Instruct directory (converted from its GGUF once per cache)."""
    from peftkit.assets import builtin_lm_path

    return str(builtin_lm_path())


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, builtin_lm_dir):
    """A tiny random Llama causal LM with SmolLM2's tokenizer and chat template: the whole SFT path in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(builtin_lm_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
                         **(TINY | {"max_position_embeddings": 512, "initializer_range": 0.02}))
    path = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(image_size=SIZE, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128)  # 64 wide: bitsandbytes 4-bit blocks need it
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory) -> str:
    """A tiny HF ResNet with an (ImageNet-style) head of 5 classes, as a pretrained classifier would be saved."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_resnet")
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
    model = ResNetForImageClassification(config)
    for m in model.modules():  # pretrained-looking running statistics, so that a change would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.9, 1.1)
    model.save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
