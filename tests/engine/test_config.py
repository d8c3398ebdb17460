"""ModelConfig: what is read from an HF config.json, and what is refused."""

from __future__ import annotations

import pytest
import torch

from engine.config import CAUSAL_LM, SEQUENCE_CLASSIFICATION, ModelConfig, parse_dtype

# The shape and rope settings of Llama-3.1-70B as its release config.json spells them
# (rope_theta + rope_scaling, from before transformers 5).
LLAMA31_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def test_llama31_release_config_is_read_with_its_rope_scaling():
    cfg = ModelConfig.from_dict(LLAMA31_70B)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (8192, 80, 64, 8)
    assert cfg.head_dim == 128 and cfg.q_size == 8192 and cfg.kv_size == 1024
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 8.0
    assert cfg.head_kind == CAUSAL_LM and cfg.checkpoint_dtype == torch.bfloat16


def test_transformers5_rope_parameters_spelling_is_read_the_same():
    new = dict(LLAMA31_70B)
    scaling = new.pop("rope_scaling")
    new["rope_parameters"] = {**scaling, "rope_theta": new.pop("rope_theta")}
    assert ModelConfig.from_dict(new) == ModelConfig.from_dict(LLAMA31_70B)


def test_default_rope_type_means_plain_rope():
    cfg = dict(LLAMA31_70B, rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    cfg.pop("rope_theta")
    parsed = ModelConfig.from_dict(cfg)
    assert parsed.rope_scaling is None and parsed.rope_theta == 1e4


def test_sequence_classification_head_labels():
    cfg = dict(LLAMA31_70B, architectures=["LlamaForSequenceClassification"], id2label={"0": "a", "1": "b", "2": "c"})
    parsed = ModelConfig.from_dict(cfg)
    assert parsed.head_kind == SEQUENCE_CLASSIFICATION and parsed.num_labels == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"architectures": ["LlamaModel"]}, "no known reward head"),
        ({"num_key_value_heads": 7}, "multiple of"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
    ],
)
def test_unsupported_configs_are_refused_with_the_reason(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**LLAMA31_70B, **change})


def test_parse_dtype_names():
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("float16") is torch.float16
    assert parse_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError):
        parse_dtype(torch.int8)
