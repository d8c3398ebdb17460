"""TensorRT-LLM unified checkpoints: the layout (one table), and reading one back.

What `reward-engine build --format trtllm` writes and `trtllm-build --checkpoint_dir`
reads (TensorRT-LLM's checkpoint format for its TensorRT backend):

    config.json             PretrainedConfig.to_dict() of a LLaMAConfig: architecture
                            "LlamaForCausalLM", dtype, shapes, mapping {world_size,
                            tp_size, pp_size}, quantization {quant_algo,
                            kv_cache_quant_algo, exclude_modules}, rotary_base,
                            rotary_scaling, ...
    rank{r}.safetensors     rank r's tensors, names and per-rank shapes in ``TENSORS``
    reward_head.json        which logits are the reward (this project's; TensorRT-LLM
                            ignores files it does not know)
    tokenizer files         copied from the source checkpoint

The reward head is stored as TensorRT-LLM's lm_head, so that an engine built with
``--gather_context_logits`` returns the reward as the last position's logits. TensorRT-LLM
sizes lm_head by vocab_size (tensorrt_llm/models/llama/model.py, LLaMAForCausalLM:
``ColumnLinear(hidden_size, pad_vocab_size(vocab_size, tp_size))``), so the head's
``rows`` reward rows (a score head's num_labels rows; a CausalLM reward's token rows,
row 0 for the Nemotron convention) are its first rows and the rest are zero: the
reward is ``context_logits[last, 0:rows]``.

``load_trtllm`` reads such a checkpoint back (every rank, merged) as the engine's fused
weights, so this project scores it; that round trip is what tests the layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, LayerWeights, ModelWeights
from .config import ModelConfig
from .engine_dir import LINEARS
from .linear import DenseLinear, QuantizedLinear
from .safetensors_io import SafetensorsReader
from .sharding import merge_layer, rank_config

FP8 = torch.float8_e4m3fn
F32 = torch.float32
CONFIG = "config.json"
REWARD_HEAD = "reward_head.json"
ARCHITECTURE = "LlamaForCausalLM"
TRT = "tensorrt_llm/"  # paths below are in the NVIDIA/TensorRT-LLM repository


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def pad_vocab_size(vocab_size: int, tp_size: int) -> int:
    """tensorrt_llm/_utils.py pad_vocab_size: the lm_head rows, a multiple of tp_size."""
    return int(math.ceil(vocab_size / tp_size) * tp_size)


@dataclass(frozen=True, slots=True)
class RankDims:
    """The sizes one rank's tensors are made of."""

    hidden: int
    vocab: int
    q: int  # query rows of the rank: num_heads / tp * head_dim
    kv: int  # key (and value) rows of the rank: max(num_kv_heads, tp) / tp * head_dim
    inter: int  # intermediate_size / tp
    head_rows: int  # lm_head rows of the rank: pad_vocab_size(vocab, tp) / tp

    @classmethod
    def of(cls, cfg: ModelConfig, tp: int) -> RankDims:
        r = rank_config(cfg, tp)  # KV heads replicated when fewer than the ranks
        return cls(cfg.hidden_size, cfg.vocab_size, r.q_size, r.kv_size, r.intermediate_size,
                   pad_vocab_size(cfg.vocab_size, tp) // tp)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tensor:
    """One row of the format: name ("{i}": the layer), per-rank shape, dtype, presence."""

    name: str
    shape: Callable[[RankDims], tuple[int, ...]]
    dtype: str  # "model": the checkpoint's dtype; "weight": E4M3 under FP8, else the dtype
    when: str  # "always" | "fp8" (quant_algo FP8) | "kv_fp8" (kv_cache_quant_algo FP8)
    source: str


_L = "transformer.layers.{i}."
_CONVERT = TRT + "models/llama/convert.py load_weights_from_hf_model"
_FP8_LINEAR = TRT + "quantization/layers.py FP8Linear: Parameter(shape=(1,), float32)"


def _linear(name: str, shape, hf: str) -> list[Tensor]:
    return [
        Tensor(_L + name + ".weight", shape, "weight", "always", f"{_CONVERT}: {hf}"),
        Tensor(_L + name + ".weights_scaling_factor", lambda d: (1,), "fp32", "fp8",
               _FP8_LINEAR + " (weight = e4m3 codes * weights_scaling_factor)"),
        Tensor(_L + name + ".activation_scaling_factor", lambda d: (1,), "fp32", "fp8",
               _FP8_LINEAR + " (input = e4m3(x / activation_scaling_factor))"),
    ]  # fmt: skip


# The whole format, in the order the exporter writes each rank file. Per rank r of tp:
# column-parallel layers (qkv, fc, gate, lm_head) hold rows of the rank, row-parallel
# ones (dense, proj) columns; norms and the embedding are whole on every rank.
TENSORS: tuple[Tensor, ...] = (
    Tensor("transformer.vocab_embedding.weight", lambda d: (d.vocab, d.hidden), "model", "always",
           f"{_CONVERT}: model.embed_tokens (use_parallel_embedding=False: whole on each rank)"),
    Tensor(_L + "input_layernorm.weight", lambda d: (d.hidden,), "model", "always",
           f"{_CONVERT}: input_layernorm ('Layer norms do not use tensor parallelism')"),
    *_linear("attention.qkv", lambda d: (d.q + 2 * d.kv, d.hidden),
             "cat(split(q_proj), split(k_proj), split(v_proj)) of the rank; k, v first "
             "repeated by models/convert_utils.py dup_kv_weight when num_key_value_heads < "
             "tp_size"),
    Tensor(_L + "attention.kv_cache_scaling_factor", lambda d: (1,), "fp32", "kv_fp8",
           TRT + "layers/attention.py Attention (quant_mode.has_kv_cache_quant()): one scale "
           "for keys and values, cache = e4m3(k / scale)"),
    *_linear("attention.dense", lambda d: (d.hidden, d.q),
             "self_attn.o_proj, split_matrix_tp(dim=1)"),
    Tensor(_L + "post_layernorm.weight", lambda d: (d.hidden,), "model", "always",
           f"{_CONVERT}: post_layernorm = post_attention_layernorm"),
    *_linear("mlp.fc", lambda d: (d.inter, d.hidden),
             "mlp.fc = mlp.gate_proj (the activated one), split_matrix_tp(dim=0)"),
    *_linear("mlp.gate", lambda d: (d.inter, d.hidden),
             "mlp.gate = mlp.up_proj, split_matrix_tp(dim=0)"),
    *_linear("mlp.proj", lambda d: (d.hidden, d.inter),
             "mlp.proj = mlp.down_proj, split_matrix_tp(dim=1)"),
    Tensor("transformer.ln_f.weight", lambda d: (d.hidden,), "model", "always",
           f"{_CONVERT}: ln_f = model.norm"),
    Tensor("lm_head.weight", lambda d: (d.head_rows, d.hidden), "model", "always",
           f"{_CONVERT}: lm_head padded to _utils.py pad_vocab_size, split_matrix_tp(dim=0); "
           "here the reward rows first, then zeros"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Quantization:
    fp8: bool = False  # quant_algo FP8: E4M3 weights, per-tensor weight and input scales
    kv_fp8: bool = False  # kv_cache_quant_algo FP8

    def to_json(self) -> dict:
        """config.json "quantization" (models/modeling_utils.py QuantConfig; algorithm
        names from quantization/mode.py QuantAlgo)."""
        return {
            "quant_algo": "FP8" if self.fp8 else None,
            "kv_cache_quant_algo": "FP8" if self.kv_fp8 else None,
            "exclude_modules": ["lm_head"] if self.fp8 else None,
        }

    @classmethod
    def from_json(cls, q: dict | None) -> Quantization:
        q = q or {}
        algo, kv = q.get("quant_algo"), q.get("kv_cache_quant_algo")
        if algo not in (None, "FP8"):
            raise CheckpointError(f"TensorRT-LLM quant_algo {algo!r} is not supported (FP8 is)")
        if kv not in (None, "FP8"):
            raise CheckpointError(f"TensorRT-LLM kv_cache_quant_algo {kv!r} is not supported "
                                  "(FP8 is)")  # fmt: skip
        return cls(algo == "FP8", kv == "FP8")


def tensor_plan(cfg: ModelConfig, tp: int, dtype: torch.dtype, quant: Quantization):
    """Every tensor of one rank file as (name, dtype, shape), in file order."""
    dims = RankDims.of(cfg, tp)
    present = {"always": True, "fp8": quant.fp8, "kv_fp8": quant.kv_fp8}
    dtypes = {"model": dtype, "weight": FP8 if quant.fp8 else dtype, "fp32": F32}
    plan = []
    for t in TENSORS:
        if not present[t.when]:
            continue
        names = [t.name.format(i=i) for i in range(cfg.num_layers)] if "{i}" in t.name else [t.name]
        plan += [(n, dtypes[t.dtype], t.shape(dims)) for n in names]
    # the table lists a layer's tensors once; the file holds layer 0's, then layer 1's...
    layer = [p for p in plan if p[0].startswith("transformer.layers.")]
    layer.sort(key=lambda p: int(p[0].split(".")[2]))
    return [plan[0], *layer, *[p for p in plan[1:] if not p[0].startswith("transformer.layers.")]]


def trtllm_config(cfg: ModelConfig, tp: int, dtype_name: str, quant: Quantization,
                  max_position_embeddings: int) -> dict:  # fmt: skip
    """config.json: the keys of models/modeling_utils.py PretrainedConfig.to_dict and
    models/llama/config.py LLaMAConfig (to_dict, from_hugging_face)."""
    scaling = None
    if cfg.rope_scaling is not None:
        # LLaMAConfig passes HF rope_scaling through; layers/attention.py reads "type"
        # (older releases only that key, newer ones fall back to "rope_type"): both kept
        scaling = {**cfg.rope_scaling, "type": cfg.rope_scaling.get("rope_type", "llama3")}
    return {
        "architecture": ARCHITECTURE,
        "dtype": dtype_name,
        "logits_dtype": "float32",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_size": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "norm_epsilon": cfg.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": max_position_embeddings,
        "rotary_base": cfg.rope_theta,
        "rotary_scaling": scaling,
        "mlp_bias": False,
        "attn_bias": False,
        "tie_word_embeddings": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": quant.to_json(),
    }


# ----------------------------------------------------------------------------- reading


def is_trtllm_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    if not (path / rank_file(0)).is_file() or not (path / CONFIG).is_file():
        return False
    try:
        raw = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "architecture" in raw and "mapping" in raw


@dataclass(slots=True)
class TrtllmCheckpoint:
    cfg: ModelConfig
    tp: int
    quant: Quantization
    head_rows: int
    raw: dict


def read_config(path: str | Path) -> TrtllmCheckpoint:
    """The engine's ModelConfig from a TensorRT-LLM config.json (and reward_head.json)."""
    path = Path(path)
    raw = json.loads((path / CONFIG).read_text())
    if raw.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{path}/{CONFIG}: architecture {raw.get('architecture')!r}; "
                              f"this engine reads {ARCHITECTURE} checkpoints")  # fmt: skip
    mapping = raw.get("mapping") or {}
    tp = int(mapping.get("tp_size", 1))
    if int(mapping.get("pp_size", 1)) != 1:
        raise CheckpointError(f"{path}: pipeline-parallel checkpoints (pp_size > 1) are not "
                              "supported; export with pp_size 1")  # fmt: skip
    if raw.get("mlp_bias") or raw.get("attn_bias"):
        raise CheckpointError(f"{path}: checkpoints with biases are not supported")
    if not (path / REWARD_HEAD).is_file():
        raise CheckpointError(
            f"{path} has no {REWARD_HEAD}: this engine needs to know which lm_head rows are "
            "the reward; export with `reward-engine build --format trtllm`"
        )
    head = json.loads((path / REWARD_HEAD).read_text())
    rows = int(head["rows"])
    # the keys LLaMAConfig.from_hugging_face read, back under their HF names; the head
    # is a score head of `rows` outputs (the reward rows of lm_head)
    hf = {
        "architectures": ["LlamaForSequenceClassification"],
        "hidden_size": raw["hidden_size"],
        "num_hidden_layers": raw["num_hidden_layers"],
        "num_attention_heads": raw["num_attention_heads"],
        "num_key_value_heads": raw.get("num_key_value_heads"),
        "head_dim": raw.get("head_size"),
        "intermediate_size": raw["intermediate_size"],
        "vocab_size": raw["vocab_size"],
        "hidden_act": raw.get("hidden_act", "silu"),
        "rms_norm_eps": raw.get("norm_epsilon", 1e-5),
        "rope_theta": raw.get("rotary_base", 10000.0),
        "rope_scaling": raw.get("rotary_scaling"),
        "max_position_embeddings": raw.get("max_position_embeddings") or 8192,
        "num_labels": rows,
        "dtype": raw["dtype"],
    }
    try:
        cfg = ModelConfig.from_dict(hf)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}/{CONFIG}: {exc}") from None
    return TrtllmCheckpoint(cfg, tp, Quantization.from_json(raw.get("quantization")), rows, raw)


def load_trtllm(path: str | Path, dtype: torch.dtype) -> tuple[TrtllmCheckpoint, ModelWeights]:
    """Every rank of the checkpoint, merged into the engine's fused weights: dense
    tensors in ``dtype``, FP8 codes as stored with their scales."""
    path = Path(path)
    ckpt = read_config(path)
    cfg, tp, quant = ckpt.cfg, ckpt.tp, ckpt.quant
    store = getattr(torch, ckpt.raw["dtype"])
    plan = tensor_plan(cfg, tp, store, quant)
    ranks = []
    for r in range(tp):
        file = path / rank_file(r)
        if not file.is_file():
            raise CheckpointError(f"{path}: {file.name} is missing (mapping.tp_size is {tp})")
        reader = SafetensorsReader(file)
        for name, want, shape in plan:
            if name not in reader or reader.dtype(name) != want or reader.shape(name) != shape:
                found = (reader.dtype(name), list(reader.shape(name))) if name in reader else "missing"
                raise CheckpointError(f"{file}: tensor {name} should be {want} {list(shape)}, "
                                      f"found {found}")  # fmt: skip
        ranks.append(reader)
    layers = [_merge([_rank_layer(r, i, dtype, quant) for r in ranks], cfg, f"{path} layer {i}")
              for i in range(cfg.num_layers)]  # fmt: skip
    lm_head = torch.cat([r.read("lm_head.weight") for r in ranks])
    return ckpt, ModelWeights(
        embed=ranks[0].read("transformer.vocab_embedding.weight").to(dtype),
        layers=layers,
        final_norm=ranks[0].read("transformer.ln_f.weight").to(dtype),
        head=lm_head[: ckpt.head_rows].to(dtype).contiguous(),
    )


def _rank_layer(reader: SafetensorsReader, i: int, dtype, quant: Quantization) -> LayerWeights:
    """Rank r's layer i in the engine's fused layout: its q|k|v as stored, gate|up =
    fc (HF gate_proj) then gate (HF up_proj); per-tensor scales repeated over rows."""
    p = f"transformer.layers.{i}."

    def linear(*names):
        w = torch.cat([reader.read(p + n + ".weight") for n in names])
        if not quant.fp8:
            return DenseLinear(w.to(dtype).contiguous())
        scales = [reader.read(p + n + ".weights_scaling_factor").reshape(()).float()
                  .expand(reader.shape(p + n + ".weight")[0]) for n in names]  # fmt: skip
        inputs = [reader.read(p + n + ".activation_scaling_factor").reshape(()) for n in names]
        # fc and gate read the same input: the larger scale clips neither
        return QuantizedLinear("fp8", w.contiguous(), torch.cat(scales).contiguous(),
                               torch.stack(inputs).max().float(), dtype)  # fmt: skip

    layer = LayerWeights(
        input_norm=reader.read(p + "input_layernorm.weight").to(dtype),
        qkv=linear("attention.qkv"),
        o_proj=linear("attention.dense"),
        post_norm=reader.read(p + "post_layernorm.weight").to(dtype),
        gate_up=linear("mlp.fc", "mlp.gate"),
        down=linear("mlp.proj"),
    )
    if quant.kv_fp8:
        scale = reader.read(p + "attention.kv_cache_scaling_factor").reshape(()).float()
        layer.k_scale, layer.v_scale = scale, scale.clone()
    return layer


def _merge(shards: list[LayerWeights], cfg: ModelConfig, where: str) -> LayerWeights:
    """The ranks' layers as one (engine/sharding.py merge_layer). Row-parallel layers
    keep one row scale for all ranks, so theirs must agree; static input scales and KV
    scales are per tensor: the largest of the ranks' is kept."""
    if len(shards) == 1:
        return shards[0]
    for name in ("o_proj", "down"):
        scales = [getattr(s, name).weight_scale for s in shards
                  if isinstance(getattr(s, name), QuantizedLinear)]  # fmt: skip
        if any(not torch.equal(x, scales[0]) for x in scales):
            raise CheckpointError(f"{where}: the ranks' weights_scaling_factor of the row-parallel "
                                  f"{name} differ; this engine needs one for all ranks")  # fmt: skip
    for name in LINEARS:
        inputs = [getattr(s, name).input_scale for s in shards
                  if isinstance(getattr(s, name), QuantizedLinear)]  # fmt: skip
        if inputs:
            top = torch.stack(inputs).max()
            for s in shards:
                getattr(s, name).input_scale = top
    if shards[0].k_scale is not None:
        top = torch.stack([torch.maximum(s.k_scale, s.v_scale) for s in shards]).max()
        for s in shards:
            s.k_scale, s.v_scale = top, top.clone()
    return merge_layer(shards, cfg)
