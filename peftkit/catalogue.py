"""Configurations of well-known models at the sizes people fine-tune, written from their published config.json
values: enough to build a model's exact shapes (on the meta device, or with random weights) without downloading a
byte of its weights. For planning memory and time, and for measuring memory and speed on synthetic weights.

Each entry also records the parameter count its publisher states, which the tests check the shapes against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftkit.errors import check

PREFIX = "catalogue:"

# name -> (config.json values, parameters as published, where the figure comes from)
CONFIGS: dict[str, tuple[dict[str, Any], int, str]] = {
    "bert-base-uncased": ({
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 30522, "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    }, 110_000_000, "BERT paper, Table: BERT-BASE 110M"),
    "roberta-base": ({
        "model_type": "roberta", "architectures": ["RobertaForMaskedLM"], "vocab_size": 50265, "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2,
    }, 125_000_000, "RoBERTa model card: 125M parameters"),
    "qwen2.5-0.5b": ({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643,
    }, 494_000_000, "Qwen2.5-0.5B model card: 0.49B parameters"),
    "qwen2.5-1.5b": ({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 1536,
        "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "max_position_embeddings": 131072, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643,
    }, 1_540_000_000, "Qwen2.5-1.5B model card: 1.54B parameters"),
    "qwen2.5-7b": ({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064, "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "max_position_embeddings": 131072, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643,
    }, 7_610_000_000, "Qwen2.5-7B model card: 7.61B parameters"),
    "llama-3.2-1b": ({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "max_position_embeddings": 131072, "rope_theta": 500_000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    }, 1_230_000_000, "Llama 3.2 model card: 1.23B parameters"),
    "llama-3.1-8b": ({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 131072, "rope_theta": 500_000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    }, 8_030_000_000, "Llama 3.1 model card: 8B (8.03B) parameters"),
    "mistral-7b-v0.1": ({
        "model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 32768, "sliding_window": 4096, "rope_theta": 10_000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    }, 7_240_000_000, "Mistral 7B paper and model card: 7.24B parameters"),
    "gemma-2b": ({
        "model_type": "gemma", "architectures": ["GemmaForCausalLM"], "vocab_size": 256000, "hidden_size": 2048,
        "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
        "head_dim": 256, "max_position_embeddings": 8192, "rope_theta": 10_000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    }, 2_510_000_000, "Gemma technical report, Table 2: 2B model, 2.51B parameters with embeddings"),
}


def names() -> list[str]:
    return sorted(CONFIGS)


def config(name: str) -> dict[str, Any]:
    """The config.json values of catalogue entry ``name`` (with or without the ``catalogue:`` prefix)."""
    key = name.removeprefix(PREFIX)
    check(key in CONFIGS, f"No model {key!r} in peftkit's catalogue. Known: {', '.join(names())}.")
    return dict(CONFIGS[key][0])


def published_parameters(name: str) -> int:
    return CONFIGS[name.removeprefix(PREFIX)][1]


def write(name: str, directory: str | Path) -> Path:
    """A model directory holding only ``config.json`` for ``name``: what `--random_init` and a planner read."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config(name), indent=2) + "\n")
    return out
