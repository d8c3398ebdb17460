"""Checkpoint loading: fused weights, sharded files, head rows, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from engine.checkpoint import CheckpointReader, load_weights
from engine.config import ModelConfig

VOCAB = 1000


def test_qkv_and_gate_up_are_fused_in_checkpoint_order(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False)
    cfg = ModelConfig.from_pretrained(ckpt)
    w = load_weights(ckpt, cfg, torch.float32)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        q, k, v = (f.get_tensor(f"model.layers.1.self_attn.{n}_proj.weight").float() for n in "qkv")
        gate = f.get_tensor("model.layers.1.mlp.gate_proj.weight").float()
        up = f.get_tensor("model.layers.1.mlp.up_proj.weight").float()
    assert torch.equal(w.layers[1].qkv.weight, torch.cat([q, k, v]))
    assert torch.equal(w.layers[1].gate_up.weight, torch.cat([gate, up]))
    assert w.layers[1].qkv.weight.dtype == torch.float32 and len(w.layers) == cfg.num_layers


def test_sharded_checkpoint_reads_every_tensor_through_the_index(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, max_shard_size="100KB")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the fixture should be sharded"
    with CheckpointReader(ckpt) as reader:
        for name in index["weight_map"]:
            assert name in reader


def test_directory_without_safetensors_says_what_to_do(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        CheckpointReader(tmp_path)


def test_out_of_range_reward_token_id_is_refused(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, architecture="LlamaForCausalLM")
    cfg = ModelConfig.from_pretrained(ckpt)
    with pytest.raises(ValueError, match="out of range"):
        load_weights(ckpt, cfg, torch.float32, reward_token_ids=(VOCAB + 1,))
