"""RewardEngine: the Python API, batching, and its guarantees."""

from __future__ import annotations

import pytest
import torch

from engine import RewardEngine
from engine.batching import pack_by_token_budget

# A sequence's reward must not depend on what it is batched with. fp32 differs only
# by summation order inside matmuls; bf16 can also flip a rounding.
BATCH_INVARIANCE_RTOL = {"float32": 1e-5, "bfloat16": 1e-2}

VOCAB = 1000


def _seqs(n, seed, max_len=150):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, VOCAB, (int(torch.randint(1, max_len, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def ckpt(make_tiny_checkpoint):
    return make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False)


@pytest.mark.parametrize("dtype", sorted(BATCH_INVARIANCE_RTOL))
def test_reward_alone_equals_reward_inside_a_mixed_batch(ckpt, dtype):
    eng = RewardEngine.from_pretrained(ckpt, dtype=dtype, max_num_batched_tokens=4096)
    target = _seqs(1, seed=7)[0]
    others = _seqs(9, seed=8)
    alone = eng.score_token_ids([target])[0]
    batch = others[:4] + [target] + others[4:]
    together = eng.score_token_ids(batch)
    assert len(together) == len(batch)
    scale = max(abs(x) for x in together)
    assert abs(together[4] - alone) <= BATCH_INVARIANCE_RTOL[dtype] * scale, (alone, together[4])


def test_results_come_back_in_input_order_whatever_the_packing(ckpt):
    seqs = _seqs(12, seed=9)
    eng_small = RewardEngine.from_pretrained(ckpt, dtype="float32", max_num_batched_tokens=160)
    eng_big = RewardEngine.from_pretrained(ckpt, dtype="float32", max_num_batched_tokens=8192)
    small, big = eng_small.score_token_ids(seqs), eng_big.score_token_ids(seqs)
    singles = [eng_big.score_token_ids([s])[0] for s in seqs]
    assert small == pytest.approx(singles, rel=1e-5, abs=1e-6)
    assert big == pytest.approx(singles, rel=1e-5, abs=1e-6)


def test_progress_callback_counts_every_token(ckpt):
    seqs = _seqs(5, seed=10)
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32", max_num_batched_tokens=100)
    seen = []
    eng.score_token_ids(seqs, progress=seen.append)
    assert sum(seen) == sum(len(s) for s in seqs)


@pytest.mark.parametrize(
    "bad, message",
    [([[]], "empty"), ([[1] * 20000], "maximum length"), ([[VOCAB + 5]], "outside")],
)
def test_bad_token_sequences_are_rejected_with_a_reason(ckpt, bad, message):
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32")
    with pytest.raises(ValueError, match=message):
        eng.score_token_ids(bad)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", torch.float32, "bf16"])
def test_dtype_accepts_names_and_torch_dtypes(ckpt, dtype):
    eng = RewardEngine.from_pretrained(ckpt, dtype=dtype)
    assert isinstance(eng.score_token_ids([[1, 2, 3]])[0], float)


def test_unknown_dtype_is_a_clear_error(ckpt):
    with pytest.raises(ValueError, match="unknown dtype"):
        RewardEngine.from_pretrained(ckpt, dtype="int8")


def test_missing_checkpoint_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        RewardEngine.from_pretrained(tmp_path)


def test_multi_attribute_heads_return_one_list_per_conversation(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, num_labels=3)
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32")
    out = eng.score_token_ids([[1, 2], [3, 4, 5]])
    assert [len(r) for r in out] == [3, 3] and all(isinstance(x, float) for x in out[0])


def test_score_and_score_responses_agree_with_token_id_scoring(tiny_checkpoint):
    eng = RewardEngine.from_pretrained(tiny_checkpoint, dtype="float32")
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    responses = ["4", "It is 4.", "5"]
    convs = [prompt + [{"role": "assistant", "content": r}] for r in responses]
    by_conv = eng.score(convs)
    by_resp = eng.score_responses(prompt, responses)
    by_ids = eng.score_token_ids([eng.chat.encode(c) for c in convs])
    assert by_conv == pytest.approx(by_ids, rel=1e-6)
    assert by_resp == pytest.approx(by_ids, rel=1e-6)
    assert len(set(by_conv)) == 3  # different responses, different rewards


def test_score_responses_accepts_a_plain_string_prompt(tiny_checkpoint):
    eng = RewardEngine.from_pretrained(tiny_checkpoint, dtype="float32")
    as_str = eng.score_responses("What is 2+2?", ["4"])
    as_msgs = eng.score_responses([{"role": "user", "content": "What is 2+2?"}], ["4"])
    assert as_str == pytest.approx(as_msgs, rel=1e-6)


@pytest.mark.parametrize(
    "lengths, budget",
    [([5, 3, 9, 1], 10), ([20, 1, 1], 10), ([], 4), ([4] * 7, 8)],
)
def test_packing_respects_the_token_budget_and_covers_every_sequence(lengths, budget):
    batches = pack_by_token_budget(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or sum(lengths[i] for i in b) <= budget
