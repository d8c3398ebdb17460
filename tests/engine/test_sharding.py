"""engine/sharding.py: rank r's slice of a layer, of N, Megatron-style.

The specification: column-parallel shards (q|k|v, gate|up) compute exactly their rows
of the unsharded output; the row-parallel shards (o_proj, down) sum to the unsharded
output; a whole attention + MLP block run shard by shard and summed equals the
unsharded block; merge_layer undoes shard_layer exactly; scales follow their rows.

Tolerances (fp32 throughout): column-parallel slices are the same dot products, but a
BLAS may pick another kernel (another K-sum order) for a narrower matrix, so the exact
checks run on small-integer weights and inputs, whose sums are exact in any order;
row-parallel sums re-associate a K-long sum, so within RTOL/ATOL.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from engine.build.quantize import quantize_linear
from engine.checkpoint import LayerWeights
from engine.config import ModelConfig
from engine.engine_dir import linear_shapes
from engine.linear import DenseLinear, QuantizedLinear
from engine.sharding import (
    ShardingError,
    check_tensor_parallel,
    kv_heads,
    merge_layer,
    q_heads,
    rank_config,
    shard_layer,
)

RTOL, ATOL = 1e-5, 1e-5

# (num_heads, num_kv_heads, tp_size): GQA 4:1 split, MHA, KV heads fewer than ranks
# (replicated), a single KV head over 4 ranks, and an awkward head_dim / hidden size.
SHAPES = [(8, 2, 2), (4, 4, 2), (4, 1, 2), (8, 2, 4), (8, 1, 4), (6, 3, 3)]


def make_cfg(num_heads, num_kv_heads, head_dim=6, hidden=20, inter=36, bias=False):
    return ModelConfig(
        hidden_size=hidden, num_layers=1, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, intermediate_size=inter, vocab_size=32, rms_norm_eps=1e-6,
        rope_theta=10000.0, rope_scaling=None, max_position_embeddings=64,
        tie_word_embeddings=False, attention_bias=bias, mlp_bias=bias,
        head_kind="sequence_classification", num_labels=1, checkpoint_dtype=torch.float32,
    )  # fmt: skip


def small_ints(*shape, generator):
    """Integers in [-3, 3] as fp32: every product and partial sum of a short dot
    product is exact, so the result does not depend on the order of the sum."""
    return torch.randint(-3, 4, shape, generator=generator).float()


def make_layer(cfg: ModelConfig, seed=0, integer=False) -> LayerWeights:
    g = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(cfg)

    def linear(name, bias):
        n, k = shapes[name]
        if integer:
            return DenseLinear(small_ints(n, k, generator=g),
                               small_ints(n, generator=g) if bias else None)  # fmt: skip
        b = torch.randn(n, generator=g) if bias else None
        return DenseLinear(torch.randn(n, k, generator=g) / k**0.5, b)

    return LayerWeights(
        input_norm=torch.rand(cfg.hidden_size, generator=g) + 0.5,
        qkv=linear("qkv", cfg.attention_bias),
        o_proj=linear("o_proj", cfg.attention_bias),
        post_norm=torch.rand(cfg.hidden_size, generator=g) + 0.5,
        gate_up=linear("gate_up", cfg.mlp_bias),
        down=linear("down", cfg.mlp_bias),
    )


def attention_mlp(layer: LayerWeights, cfg: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    """A plain reference of the parallel part of a layer: causal GQA attention with
    o_proj, then the SwiGLU MLP of x (norms and rope left out: they are replicated).
    For a shard, ``cfg`` is rank_config and the result is its partial sum."""
    t, d = x.shape[0], cfg.head_dim
    qkv = layer.qkv(x)
    q = qkv[:, : cfg.q_size].view(t, cfg.num_heads, d).transpose(0, 1)
    k = qkv[:, cfg.q_size : cfg.q_size + cfg.kv_size].view(t, cfg.num_kv_heads, d)
    v = qkv[:, cfg.q_size + cfg.kv_size :].view(t, cfg.num_kv_heads, d)
    group = cfg.num_heads // cfg.num_kv_heads
    k = k.transpose(0, 1).repeat_interleave(group, 0)
    v = v.transpose(0, 1).repeat_interleave(group, 0)
    attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    attn_out = layer.o_proj(attn.transpose(0, 1).reshape(t, cfg.q_size))
    gate, up = layer.gate_up(x).chunk(2, dim=-1)
    return attn_out, layer.down(F.silu(gate) * up)


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", SHAPES)
def test_shards_have_the_rank_config_shapes(num_heads, num_kv_heads, tp):
    cfg = make_cfg(num_heads, num_kv_heads, bias=True)
    rcfg = rank_config(cfg, tp)
    assert rcfg.num_heads == num_heads // tp
    assert rcfg.num_kv_heads == max(1, num_kv_heads // tp)
    assert rcfg.intermediate_size == cfg.intermediate_size // tp
    assert rcfg.hidden_size == cfg.hidden_size
    layer = make_layer(cfg)
    for rank in range(tp):
        shard = shard_layer(layer, cfg, rank, tp)
        for name, linear in shard.linears().items():
            assert tuple(linear.weight.shape) == linear_shapes(rcfg)[name], name
            assert linear.weight.is_contiguous()
        # The row-parallel bias is added once, by rank 0's partial sum.
        assert (shard.o_proj.bias is not None) == (rank == 0)
        assert (shard.down.bias is not None) == (rank == 0)
        assert shard.qkv.bias.shape == (rcfg.q_size + 2 * rcfg.kv_size,)


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", SHAPES)
def test_each_rank_gets_the_kv_heads_its_q_heads_read(num_heads, num_kv_heads, tp):
    cfg = make_cfg(num_heads, num_kv_heads)
    group = num_heads // num_kv_heads
    held = set()
    for rank in range(tp):
        needed = {h // group for h in q_heads(cfg, rank, tp)}
        assert set(kv_heads(cfg, rank, tp)) == needed
        held |= needed
    assert held == set(range(num_kv_heads))
    assert sorted(h for r in range(tp) for h in q_heads(cfg, r, tp)) == list(range(num_heads))


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", SHAPES)
def test_column_parallel_shards_compute_their_heads_rows_exactly(num_heads, num_kv_heads, tp):
    cfg = make_cfg(num_heads, num_kv_heads, bias=True)
    layer = make_layer(cfg, integer=True)
    x = small_ints(7, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    d = cfg.head_dim
    full = layer.qkv(x)
    q = full[:, : cfg.q_size].view(7, num_heads, d)
    k = full[:, cfg.q_size : cfg.q_size + cfg.kv_size].view(7, num_kv_heads, d)
    v = full[:, cfg.q_size + cfg.kv_size :].view(7, num_kv_heads, d)
    gate, up = layer.gate_up(x).chunk(2, dim=-1)
    rcfg = rank_config(cfg, tp)
    gates, ups = [], []
    for rank in range(tp):
        shard = shard_layer(layer, cfg, rank, tp)
        part = shard.qkv(x)
        qh, kh = q_heads(cfg, rank, tp), kv_heads(cfg, rank, tp)
        exact = dict(rtol=0, atol=0)
        torch.testing.assert_close(part[:, : rcfg.q_size].view(7, -1, d),
                                   q[:, qh.start : qh.stop], **exact)  # fmt: skip
        k_r = part[:, rcfg.q_size : rcfg.q_size + rcfg.kv_size].view(7, -1, d)
        v_r = part[:, rcfg.q_size + rcfg.kv_size :].view(7, -1, d)
        torch.testing.assert_close(k_r, k[:, kh.start : kh.stop], **exact)
        torch.testing.assert_close(v_r, v[:, kh.start : kh.stop], **exact)
        g_r, u_r = shard.gate_up(x).chunk(2, dim=-1)
        gates.append(g_r)
        ups.append(u_r)
    # Concatenating the ranks' gate (and up) columns gives the unsharded ones.
    torch.testing.assert_close(torch.cat(gates, dim=1), gate, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(ups, dim=1), up, rtol=0, atol=0)


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_summed_partial_outputs_reproduce_attention_and_mlp(num_heads, num_kv_heads, tp, bias):
    cfg = make_cfg(num_heads, num_kv_heads, bias=bias)
    layer = make_layer(cfg, seed=1)
    x = torch.randn(9, cfg.hidden_size)
    want_attn, want_mlp = attention_mlp(layer, cfg, x)
    rcfg = rank_config(cfg, tp)
    parts = [attention_mlp(shard_layer(layer, cfg, r, tp), rcfg, x) for r in range(tp)]
    torch.testing.assert_close(sum(p[0] for p in parts), want_attn, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(sum(p[1] for p in parts), want_mlp, rtol=RTOL, atol=ATOL)
    assert not torch.allclose(parts[0][1], want_mlp, atol=1e-3)  # one rank alone is partial


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", SHAPES)
def test_merge_layer_undoes_shard_layer(num_heads, num_kv_heads, tp):
    cfg = make_cfg(num_heads, num_kv_heads, bias=True)
    layer = make_layer(cfg, seed=2)
    merged = merge_layer([shard_layer(layer, cfg, r, tp) for r in range(tp)], cfg)
    for name, linear in layer.linears().items():
        got = merged.linears()[name]
        assert torch.equal(got.weight, linear.weight), name
        assert torch.equal(got.bias, linear.bias), name


def quantized_layer(cfg: ModelConfig, quantization: str, static: bool) -> LayerWeights:
    layer = make_layer(cfg, seed=3)
    amax = 4.0 if static else None
    return dataclasses.replace(layer, **{
        name: quantize_linear(linear, quantization, amax, torch.float32)
        for name, linear in layer.linears().items()
    })  # fmt: skip


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("num_heads,num_kv_heads,tp", [(8, 2, 2), (4, 1, 2)])
def test_quantization_scales_follow_their_rows(quantization, static, num_heads, num_kv_heads, tp):
    cfg = make_cfg(num_heads, num_kv_heads, head_dim=16, hidden=32, inter=64)
    layer = quantized_layer(cfg, quantization, static)
    x = torch.randn(5, cfg.hidden_size)
    full_gate_up = layer.gate_up(x)
    merged = merge_layer([shard_layer(layer, cfg, r, tp) for r in range(tp)], cfg)
    for rank in range(tp):
        shard = shard_layer(layer, cfg, rank, tp)
        for name in ("qkv", "gate_up"):  # column-parallel: scales sliced with the rows
            s = shard.linears()[name]
            assert isinstance(s, QuantizedLinear) and s.packed is None
            assert s.weight_scale.shape == (s.weight.shape[0],)
        for name in ("o_proj", "down"):  # row-parallel: every output row, whole scales
            s, whole = shard.linears()[name], layer.linears()[name]
            assert torch.equal(s.weight_scale, whole.weight_scale)
        for name, s in shard.linears().items():  # static activation scales unchanged
            whole = layer.linears()[name].input_scale
            assert (s.input_scale is None) == (not static)
            assert s.input_scale is None or torch.equal(s.input_scale, whole)
        inter = rank_config(cfg, tp).intermediate_size
        g_r, u_r = shard.gate_up(x).chunk(2, dim=-1)
        cols = slice(rank * inter, (rank + 1) * inter)
        # The same codes and scales per row: the shard's rows of the unsharded output.
        torch.testing.assert_close(g_r, full_gate_up[:, cols], rtol=0, atol=0)
        torch.testing.assert_close(u_r, full_gate_up[:, cfg.intermediate_size:][:, cols],
                                   rtol=0, atol=0)  # fmt: skip
    for name, linear in layer.linears().items():
        assert torch.equal(merged.linears()[name].weight_scale, linear.weight_scale), name
        assert torch.equal(merged.linears()[name].weight.view(torch.uint8),
                           linear.weight.view(torch.uint8)), name  # fmt: skip


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_quantized_row_parallel_partial_sums_match_with_static_scales(quantization):
    cfg = make_cfg(8, 2, head_dim=16, hidden=32, inter=64)
    layer = quantized_layer(cfg, quantization, static=True)
    act = torch.randn(6, cfg.intermediate_size)
    want = layer.down(act)
    inter = cfg.intermediate_size // 2
    got = sum(shard_layer(layer, cfg, r, 2).down(act[:, r * inter : (r + 1) * inter])
              for r in range(2))  # fmt: skip
    # Same codes (elementwise with one scale), integer/E4M3-exact products: only the
    # order of the fp32 sums differs.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,inter,tp,what",
    [(6, 6, 36, 4, "num_attention_heads"), (8, 8, 30, 4, "intermediate_size"),
     (12, 6, 48, 4, "num_key_value_heads"), (8, 2, 32, 0, "positive int")],
)  # fmt: skip
def test_shapes_that_do_not_split_are_refused_with_the_reason(
    num_heads, num_kv_heads, inter, tp, what
):
    cfg = make_cfg(num_heads, num_kv_heads, inter=inter)
    with pytest.raises(ShardingError, match=what):
        check_tensor_parallel(cfg, tp)


def test_rank_out_of_range_is_refused():
    cfg = make_cfg(8, 2)
    with pytest.raises(ShardingError, match="rank 2"):
        shard_layer(make_layer(cfg), cfg, 2, 2)


def test_one_rank_is_the_whole_layer():
    cfg = make_cfg(8, 2)
    layer = make_layer(cfg)
    assert shard_layer(layer, cfg, 0, 1) is layer
    assert rank_config(cfg, 1) is cfg
