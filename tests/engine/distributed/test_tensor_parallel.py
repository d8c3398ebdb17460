"""Tensor parallelism end to end: 2 ranks (gloo, 2 processes on this host) against 1.

The oracle is the single-process engine on the same checkpoint and inputs. Tolerances,
relative to the batch's largest |reward| (as in test_model_vs_hf.py):
  - float32, and W8A8 with static activation scales: TP_FP32_RTOL. The shards compute
    the same products; only the order of the two partial sums differs.
  - bfloat16: BF16_TP_RTOL. Each rank's partial sum is rounded to bf16 before the
    all-reduce adds them (measured: 3.5e-3; bf16 vs fp32 itself is 4.5e-3 here).
  - INT8 with dynamic (per token) activation scales: INT8_DYNAMIC_TP_RTOL. Each rank
    scales its slice of down's input by that slice's own range (measured: 4e-3).
The sequences cross the token budget (chunked prefill over several steps) and share a
prefix (prefix-cache hits), so the broadcast metadata covers every kind of step.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from engine import AsyncRewardEngine, EngineDeadError, RewardEngine
from engine.build.native import build_engine
from engine.build.settings import BuildSettings
from engine.cli import main
from engine.engine_dir import EngineDirError, read_manifest
from engine.sharding import ShardingError

TP_FP32_RTOL = 1e-5
BF16_TP_RTOL = 2e-2
INT8_DYNAMIC_TP_RTOL = 2e-2

ENGINE = dict(num_kv_blocks=96, max_num_batched_tokens=64)

GQA_4TO1 = dict(num_attention_heads=8, num_key_value_heads=2)  # 4 q heads, 1 KV head per rank
KV_FEWER_THAN_RANKS = dict(num_attention_heads=4, num_key_value_heads=1)  # KV head replicated


def sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, 1000, (40,), generator=g).tolist()
    alone = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (1, 17, 90, 200)]
    shared = [prefix + torch.randint(0, 1000, (n,), generator=g).tolist() for n in (1, 9, 30)]
    return alone + shared


SEQS = sequences()


def rewards(path, tp: int, dtype: str = "float32", **kwargs) -> torch.Tensor:
    with RewardEngine.from_pretrained(path, dtype, tensor_parallel_size=tp, **ENGINE,
                                      **kwargs) as engine:  # fmt: skip
        return torch.tensor(engine.score_token_ids(SEQS))


def children() -> set[int]:
    """Pids of this process's live child processes (the module's shared engine has one)."""
    return {p.pid for p in multiprocessing.active_children()}


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol} x reward scale {scale:.3g}"


@pytest.fixture(scope="module")
def gqa_checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint(**GQA_4TO1)


@pytest.fixture(scope="module")
def kv1_checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint(**KV_FEWER_THAN_RANKS)


@pytest.fixture(scope="module")
def tp2_engine(gqa_checkpoint):
    """One TP=2 engine shared by the tests that only read from it."""
    engine = RewardEngine.from_pretrained(gqa_checkpoint, "float32", tensor_parallel_size=2,
                                          **ENGINE)  # fmt: skip
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tp1_rewards(gqa_checkpoint):
    return rewards(gqa_checkpoint, 1)


def test_tp2_rewards_equal_tp1_with_gqa_4_to_1(tp2_engine, tp1_rewards):
    got = torch.tensor(tp2_engine.score_token_ids(SEQS))
    assert_close_to_scale(got, tp1_rewards, TP_FP32_RTOL)
    assert tp1_rewards.std() > 0.01  # the rewards differ: a wrong shard would show


def test_tp2_rewards_equal_tp1_with_fewer_kv_heads_than_ranks(kv1_checkpoint):
    assert_close_to_scale(rewards(kv1_checkpoint, 2), rewards(kv1_checkpoint, 1), TP_FP32_RTOL)


def test_tp2_bf16_rewards_within_the_bf16_bound(gqa_checkpoint, tp1_rewards):
    tp2 = rewards(gqa_checkpoint, 2, "bfloat16")
    assert_close_to_scale(tp2, rewards(gqa_checkpoint, 1, "bfloat16"), BF16_TP_RTOL)
    assert_close_to_scale(tp2, tp1_rewards, BF16_TP_RTOL)  # and as close to fp32


def test_each_layer_all_reduces_twice_per_step(tp2_engine, gqa_checkpoint):
    tp2_engine.reset_prefix_cache()
    before = tp2_engine.metrics()
    tp2_engine.score_token_ids([[1, 2, 3], [4, 5, 6, 7]])  # one step, both sequences finish
    after = tp2_engine.metrics()
    assert after["tensor_parallel_size"] == 2
    assert after["model_steps"] - before["model_steps"] == 1
    assert after["allreduce_calls"] - before["allreduce_calls"] == 2 * 2  # 2 layers
    assert after["allreduce_time_total_s"] > before["allreduce_time_total_s"]
    # Each rank holds half of the KV heads: rank 0's pool is half of a TP=1 pool.
    with RewardEngine.from_pretrained(gqa_checkpoint, "float32", **ENGINE) as tp1:
        assert tp2_engine.kv_cache.nbytes * 2 == tp1.kv_cache.nbytes


@pytest.fixture(scope="module")
def quantized_engines(gqa_checkpoint, tmp_path_factory):
    """name -> (single-file engine dir, engine dir built with --tp 2 or None)."""
    out = {}
    for name, q, scales, tp_build in (("fp8-static", "fp8", "static", True),
                                      ("int8-static", "int8", "static", False),
                                      ("int8-dynamic", "int8", "dynamic", False)):  # fmt: skip
        dirs = []
        for tp in (1, 2) if tp_build else (1,):
            path = tmp_path_factory.mktemp(f"{name}-tp{tp}") / "engine"
            settings = BuildSettings(quantization=q, activation_scales=scales, dtype="float32",
                                     calibration_size=8, tensor_parallel_size=tp)  # fmt: skip
            dirs.append(build_engine(gqa_checkpoint, path, settings, progress=False).path)
        out[name] = (dirs[0], dirs[1] if tp_build else None)
    return out


@pytest.mark.parametrize(
    "name,rtol",
    [("fp8-static", TP_FP32_RTOL), ("int8-static", TP_FP32_RTOL),
     ("int8-dynamic", INT8_DYNAMIC_TP_RTOL)],
)  # fmt: skip
def test_w8a8_engines_with_tp2_equal_tp1(quantized_engines, name, rtol):
    single, per_rank = quantized_engines[name]
    want = rewards(single, 1)
    # An engine built with --tp 2 reads one file per rank; a single-file one is sharded.
    got = rewards(per_rank if per_rank is not None else single, 2)
    assert_close_to_scale(got, want, rtol)


def test_an_engine_built_with_tp2_has_one_weights_file_per_rank(quantized_engines):
    _, path = quantized_engines["fp8-static"]
    manifest = read_manifest(path)
    assert manifest["weights"]["tensor_parallel_size"] == 2
    files = set(manifest["files"])
    assert {"weights.rank0.safetensors", "weights.rank1.safetensors"} <= files
    assert "weights.safetensors" not in files
    before = children()
    with pytest.raises(EngineDirError, match=r"built for tensor_parallel_size=2.*--tp 1"):
        RewardEngine.from_pretrained(path, "float32")
    with pytest.raises(EngineDirError, match=r"tensor_parallel_size=2 \(--tensor-parallel-size"):
        RewardEngine.from_pretrained(path, "float32", tensor_parallel_size=4)
    assert children() == before  # refused before any worker started


def test_a_shape_that_does_not_split_is_refused_before_spawning(tiny_checkpoint):
    before = children()
    with pytest.raises(ShardingError, match="tensor_parallel_size=3 does not divide"):
        RewardEngine.from_pretrained(tiny_checkpoint, "float32", tensor_parallel_size=3)
    with pytest.raises(ValueError, match="positive int"):
        RewardEngine.from_pretrained(tiny_checkpoint, "float32", tensor_parallel_size=0)
    assert children() == before


def score_in_thread(engine, seqs, timeout_s=30.0):
    """engine.score_token_ids(seqs), failing the test instead of hanging."""
    result = {}

    def run():
        try:
            result["value"] = engine.score_token_ids(seqs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"scoring hung for {timeout_s} s"
    return result


def test_a_killed_worker_fails_the_engine_with_a_clear_error(gqa_checkpoint):
    engine = RewardEngine.from_pretrained(gqa_checkpoint, "float32", tensor_parallel_size=2,
                                          **ENGINE)  # fmt: skip
    try:
        assert len(engine.score_token_ids(SEQS[:2])) == 2
        (pid,) = engine.parallel.worker_pids
        os.kill(pid, signal.SIGKILL)
        result = score_in_thread(engine, SEQS)
        error = result.get("error")
        assert isinstance(error, EngineDeadError), result
        assert f"rank 1 (pid {pid}) died (killed by SIGKILL)" in str(error)
        assert "start a new engine" in str(error)
        # The engine stays dead, quickly, and its requests are gone.
        again = score_in_thread(engine, SEQS[:1], timeout_s=5.0)
        assert isinstance(again.get("error"), EngineDeadError)
        assert engine.scheduler.has_unfinished_requests() is False
    finally:
        engine.close()
    assert pid not in children()


def test_close_stops_the_workers(gqa_checkpoint):
    engine = RewardEngine.from_pretrained(gqa_checkpoint, "float32", tensor_parallel_size=2,
                                          **ENGINE)  # fmt: skip
    threads = torch.get_num_threads()
    assert engine.parallel.workers_alive == [True]
    engine.close()
    engine.close()  # idempotent
    assert engine.parallel.workers_alive == [False]
    assert not set(engine.parallel.worker_pids) & children()
    assert torch.get_num_threads() >= threads  # this process's threads given back
    with pytest.raises(EngineDeadError, match="closed"):
        engine.score_token_ids([[1, 2, 3]])


def test_async_engine_with_tp2(gqa_checkpoint, tp1_rewards):
    async def run():
        eng = AsyncRewardEngine.from_pretrained(gqa_checkpoint, "float32",
                                                tensor_parallel_size=2, **ENGINE)  # fmt: skip
        async with eng:
            got = await asyncio.gather(*(eng.score_token_ids(s) for s in SEQS))
            (pid,) = eng.engine.parallel.worker_pids
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError, match="rank 1"):
                await asyncio.wait_for(eng.score_token_ids(SEQS[3]), 30)
            with pytest.raises(EngineDeadError):
                await eng.score_token_ids(SEQS[0])
        return got, eng

    got, eng = asyncio.run(run())
    assert_close_to_scale(torch.tensor(got), tp1_rewards, TP_FP32_RTOL)
    assert eng.engine.parallel.workers_alive == [False]  # `async with` closed what it loaded


def test_cli_build_tp2_and_score_tp2(gqa_checkpoint, tmp_path):
    before = children()
    lines = [{"id": i, "prompt": f"Question {i}?", "responses": ["Yes.", f"No, {i}."]}
             for i in range(6)]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    engine_dir = tmp_path / "engine-tp2"
    assert main(["build", str(gqa_checkpoint), "-o", str(engine_dir), "--dtype", "float32",
                 "--tp", "2", "--no-progress"]) == 0  # fmt: skip
    outputs = {}
    for name, model, tp in (("tp1", gqa_checkpoint, "1"), ("tp2", engine_dir, "2")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["score", "--model", str(model), "--input", str(src), "--output", str(out),
                     "--dtype", "float32", "--tensor-parallel-size", tp, "--no-progress"]) == 0
        outputs[name] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in outputs["tp2"]] == list(range(6))
    want = torch.tensor([x["rewards"] for x in outputs["tp1"]])
    assert_close_to_scale(torch.tensor([x["rewards"] for x in outputs["tp2"]]), want,
                          TP_FP32_RTOL)  # fmt: skip
    # Loading it with another size is a usage error that says what to pass.
    code = main(["score", "--model", str(engine_dir), "--input", str(src), "--output",
                 str(tmp_path / "x.jsonl"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert children() == before  # the CLI closed its engine


def test_the_single_process_path_imports_nothing_distributed(tiny_checkpoint):
    code = (
        "import sys; from engine import RewardEngine; "
        f"e = RewardEngine.from_pretrained({str(tiny_checkpoint)!r}, 'float32', num_kv_blocks=8); "
        "e.score_token_ids([[1, 2, 3]]); "
        "print(sorted(m for m in sys.modules if m.startswith('engine.distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[3], timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def bias_checkpoint(make_tiny_checkpoint, tmp_path_factory):
    """GQA 4:1 with q/k/v/o and MLP biases, made nonzero (HF initializes them to 0), so a
    row-parallel bias added by both ranks, or by none, would show."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = Path(make_tiny_checkpoint(**GQA_4TO1, attention_bias=True, mlp_bias=True))
    path = tmp_path_factory.mktemp("bias") / "ckpt"
    shutil.copytree(source, path)
    tensors = load_file(path / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    for name, t in tensors.items():
        if name.endswith(".bias"):
            tensors[name] = (torch.randn(t.shape, generator=g) * 0.5).to(t.dtype)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def bias_tp1_rewards(bias_checkpoint):
    return rewards(bias_checkpoint, 1)


def test_biases_are_added_once_with_tp2_sharding_at_load(bias_checkpoint, bias_tp1_rewards):
    assert_close_to_scale(rewards(bias_checkpoint, 2), bias_tp1_rewards, TP_FP32_RTOL)


def test_biases_are_added_once_from_an_engine_built_with_tp2(
    bias_checkpoint, bias_tp1_rewards, tmp_path
):
    engine_dir = build_engine(bias_checkpoint, tmp_path / "engine",
                              BuildSettings(dtype="float32", tensor_parallel_size=2),
                              progress=False).path  # fmt: skip
    assert_close_to_scale(rewards(engine_dir, 2), bias_tp1_rewards, TP_FP32_RTOL)


def test_a_worker_that_fails_to_start_reports_its_error(quantized_engines, tmp_path):
    import shutil

    _, built = quantized_engines["fp8-static"]
    damaged = tmp_path / "damaged"
    shutil.copytree(built, damaged)
    rank1 = damaged / "weights.rank1.safetensors"
    data = bytearray(rank1.read_bytes())
    data[-1] ^= 0xFF  # only rank 1 reads (and checks) this file
    rank1.write_bytes(bytes(data))
    before = children()
    with pytest.raises(EngineDeadError, match=r"rank 1 \(pid \d+\) failed: .*weights.rank1"
                                              r".*sha256.*the engine cannot start"):
        RewardEngine.from_pretrained(damaged, "float32", tensor_parallel_size=2, **ENGINE)
    assert children() == before


@pytest.mark.parametrize("raised", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_step_that_fails_on_rank_0_kills_the_engine(gqa_checkpoint, raised):
    engine = RewardEngine.from_pretrained(gqa_checkpoint, "float32", tensor_parallel_size=2,
                                          **ENGINE)  # fmt: skip

    def fail(*args, **kwargs):  # after the broadcast: the worker is inside the step
        raise raised

    engine.model.rewards = fail
    (pid,) = engine.parallel.worker_pids
    result = score_in_thread(engine, SEQS[:2])
    if isinstance(raised, KeyboardInterrupt):
        assert isinstance(result.get("error"), KeyboardInterrupt)  # still an interrupt
    else:
        assert isinstance(result.get("error"), EngineDeadError)
        assert "a step failed on rank 0 (RuntimeError: boom)" in str(result["error"])
    # Either way the ranks are out of step: the engine is dead and its worker stopped.
    again = score_in_thread(engine, SEQS[:1], timeout_s=5.0)
    assert isinstance(again.get("error"), EngineDeadError)
    assert pid not in children()
    engine.close()
