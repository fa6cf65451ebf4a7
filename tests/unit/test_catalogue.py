"""The catalogue of well-known model shapes (peftkit/catalogue.py): each builds, on the meta device (no memory, no
download), a model with the parameter count its publisher states."""

from __future__ import annotations

import json

import pytest
import torch

from peftkit import catalogue


@pytest.mark.parametrize("name", catalogue.names())
def test_each_shape_has_its_published_parameter_count(name):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    values = catalogue.config(name)
    config = AutoConfig.for_model(**values)
    auto = AutoModelForMaskedLM if values["architectures"][0].endswith("MaskedLM") else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    assert type(model).__name__ == values["architectures"][0]
    count = sum(p.numel() for p in model.parameters())  # a tied embedding counts once
    published = catalogue.published_parameters(name)
    assert abs(count - published) / published < 0.01, f"{name}: {count:,} parameters, published {published:,}"


def test_a_directory_with_only_its_config_loads_as_that_model(tmp_path):
    from transformers import AutoConfig

    path = catalogue.write("catalogue:qwen2.5-0.5b", tmp_path / "qwen")
    assert [p.name for p in path.iterdir()] == ["config.json"]
    config = AutoConfig.from_pretrained(path)
    assert (config.model_type, config.hidden_size, config.num_key_value_heads) == ("qwen2", 896, 2)
    assert json.loads((path / "config.json").read_text()) == catalogue.config("qwen2.5-0.5b")


def test_an_unknown_name_lists_the_known_ones():
    from peftkit.errors import PeftkitError

    with pytest.raises(PeftkitError, match="No model 'gpt-5' in peftkit's catalogue. Known: bert-base-uncased"):
        catalogue.config("catalogue:gpt-5")
