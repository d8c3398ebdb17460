"""Rewards equal HF transformers' on the same seeded checkpoints.

The oracle is transformers' LlamaForSequenceClassification / LlamaForCausalLM run on
each sequence alone (no padding). Tolerances, relative to the largest |reward| of the
batch (random-init rewards cluster near zero, so a per-element relative bound would
measure noise):
  - float32: within FP32_RTOL = 1e-4;
  - bfloat16: within BF16_RTOL. Two bf16 implementations differ by where they round
    (fused vs unfused ops, matmul blocking); BF16_RTOL is the bound this engine is held
    to, and HF bf16 itself must sit within the same bound of the fp32 result, so the
    test shows the engine is as close to the fp32 truth as HF bf16 is.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from engine import RewardEngine

FP32_RTOL = 1e-4
BF16_RTOL = 5e-2

VOCAB = 1000
LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,  # small, so test positions cross the bands
)

CASES = {
    "gqa-1to1": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa-4to1": dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2),
    "odd-hidden": dict(
        hidden_size=99, num_attention_heads=3, num_key_value_heads=1, head_dim=16, intermediate_size=77
    ),
    "rope-llama3": dict(rope_scaling=LLAMA3_SCALING),
    "rope-plain": dict(rope_scaling=None, rope_theta=10000.0),
    "labels-3": dict(num_labels=3),
    "causal-lm-row": dict(architecture="LlamaForCausalLM"),
    "causal-lm-tied": dict(architecture="LlamaForCausalLM", tie_word_embeddings=True),
    "seqcls-tied": dict(tie_word_embeddings=True),
    "sharded": dict(max_shard_size="100KB"),
}


def random_sequences(n: int, seed: int, min_len: int = 1, max_len: int = 200) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(0, VOCAB, (k,), generator=g).tolist() for k in lens]


def hf_rewards(model_dir, seqs, dtype, reward_token_ids=(0,)) -> torch.Tensor:
    arch = transformers.AutoConfig.from_pretrained(model_dir).architectures[0]
    model = getattr(transformers, arch).from_pretrained(model_dir, dtype=dtype).eval()
    out = []
    with torch.inference_mode():
        for ids in seqs:
            logits = model(torch.tensor([ids])).logits.float()
            if arch.endswith("CausalLM"):  # [1, T, vocab]: the given rows at the last position
                out.append(logits[0, -1, list(reward_token_ids)])
            else:  # [1, num_labels], already pooled at the last token
                out.append(logits[0])
    return torch.stack(out)


def engine_rewards(model_dir, seqs, dtype, **kwargs) -> torch.Tensor:
    eng = RewardEngine.from_pretrained(model_dir, dtype=dtype, **kwargs)
    r = eng.score_token_ids(seqs)
    return torch.tensor(r if isinstance(r[0], list) else [[x] for x in r])


def assert_rewards_close(ours, ref, rtol, what=""):
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite rewards {ours}"
    scale = ref.abs().max().item()
    err = (ours - ref).abs()
    worst = int(err.argmax())
    assert err.max().item() <= rtol * scale, (
        f"{what}: max |diff| {err.max().item():.3g} > {rtol} * {scale:.3g} "
        f"at flat index {worst}: ours {ours.flatten()[worst].item():.6g} "
        f"vs HF {ref.flatten()[worst].item():.6g}"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_rewards_match_hf(make_tiny_checkpoint, case):
    settings = dict(CASES[case])
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, **settings)
    seqs = random_sequences(6, seed=1)
    ours = engine_rewards(ckpt, seqs, "float32", max_num_batched_tokens=300)
    assert_rewards_close(ours, hf_rewards(ckpt, seqs, torch.float32), FP32_RTOL, case)


@pytest.mark.parametrize("case", ["gqa-4to1", "rope-llama3", "labels-3", "causal-lm-row"])
def test_bf16_rewards_match_hf_within_bound(make_tiny_checkpoint, case):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, **CASES[case])
    seqs = random_sequences(6, seed=2)
    truth = hf_rewards(ckpt, seqs, torch.float32)
    hf_bf16 = hf_rewards(ckpt, seqs, torch.bfloat16)
    ours = engine_rewards(ckpt, seqs, "bfloat16")
    assert_rewards_close(hf_bf16, truth, BF16_RTOL, f"{case}: HF bf16 vs fp32 (bound sanity)")
    assert_rewards_close(ours, hf_bf16, BF16_RTOL, f"{case}: engine bf16 vs HF bf16")
    assert_rewards_close(ours, truth, BF16_RTOL, f"{case}: engine bf16 vs fp32")


def test_causal_lm_reads_only_the_requested_token_rows(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, architecture="LlamaForCausalLM")
    seqs = random_sequences(3, seed=3)
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32", reward_token_ids=[0, 7])
    assert tuple(eng.model.w.head.shape) == (2, 64)  # two rows, never the [vocab, hidden] head
    ours = torch.tensor(eng.score_token_ids(seqs))
    assert_rewards_close(ours, hf_rewards(ckpt, seqs, torch.float32, (0, 7)), FP32_RTOL)


def test_checkpoint_dtype_fp16_weights_run_in_fp32(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, dtype="float16")
    seqs = random_sequences(3, seed=4)
    ours = engine_rewards(ckpt, seqs, torch.float32)
    assert_rewards_close(ours, hf_rewards(ckpt, seqs, torch.float32), FP32_RTOL)
