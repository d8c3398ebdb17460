"""bench/e2e.py's optional vLLM column, without vLLM: a stand-in interpreter plays
bench/vllm_baseline.py's part of the JSON contract (case in, result out), so the
harness side is checked here: what the case holds, that the best time is kept,
that a failing run says why, and how the column is reported."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("transformers")  # bench/e2e.py's HF baseline


def load_e2e():
    # By path, not through sys.path: bench/ also holds kernels.py, which would shadow
    # the kernels package.
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


e2e = load_e2e()

# Records the case next to the result, answers with rewards = sequence lengths.
FAKE_VLLM = """#!{python}
import json, sys
script, case_path, result_path = sys.argv[1:]
case = json.load(open(case_path))
json.dump(case, open({record!r}, "w"))
json.dump({{"seconds": [3.0, 2.0], "rewards": [float(len(s)) for s in case["seqs"]],
           "version": "0.0-fake"}}, open(result_path, "w"))
"""


def fake_interpreter(tmp_path, body: str) -> str:
    path = tmp_path / "python"
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def test_case_and_result_contract(tmp_path):
    record = tmp_path / "case.json"
    python = fake_interpreter(tmp_path, FAKE_VLLM.format(python=sys.executable, record=str(record)))
    seqs = [[1, 2, 3], [4, 5]]
    out = e2e.run_vllm(python, Path("checkpoints/x"), seqs, budget=512, repeat=2)
    assert out == {"seconds": 2.0, "rewards": [3.0, 2.0], "version": "0.0-fake"}
    case = json.loads(record.read_text())
    assert Path(case["model"]).is_absolute()
    assert (Path(case["tokenizer"]) / "tokenizer.json").is_file()
    assert case["seqs"] == seqs and case["warmup"] == e2e.WARMUP
    assert (case["repeat"], case["budget"]) == (2, 512)
    assert case["threads"] >= 1


def test_a_failing_vllm_run_says_why(tmp_path):
    python = fake_interpreter(tmp_path, "#!/bin/sh\necho 'No module named vllm' >&2\nexit 3\n")
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*No module named vllm"):
        e2e.run_vllm(python, Path("m"), [[1]], budget=16, repeat=1)


def test_report_has_the_vllm_table_only_when_measured():
    info = {"date": "d", "cpu": "c", "threads": 2, "torch": "t", "transformers": "x",
            "python": "p", "repeat": 1}  # fmt: skip
    row = {"model": "small", "workload": "mixed", "sequences": 2, "tokens": 100,
           "engine_tok_s": 300.0, "hf_padded_tok_s": 100.0, "hf_bs1_tok_s": None,
           "x_hf_padded": 3.0, "x_hf_bs1": None, "engine_tokens_computed": 100,
           "prefix_cache_hit_rate": 0.0, "pct_roofline": 80.0,
           "max_abs_reward_diff_vs_hf": 0.01, "max_abs_hf_reward": 1.0}  # fmt: skip
    assert "vLLM" not in e2e.render_markdown(info, [row], {}, 4096)
    row.update(vllm_tok_s=200.0, vllm_version="0.0-fake", vllm_x_hf_padded=2.0,
               vllm_pct_roofline=53.0, x_vllm=1.5, vllm_max_abs_reward_diff_vs_hf=0.02)  # fmt: skip
    text = e2e.render_markdown(info, [row], {}, 4096)
    assert "vLLM's CPU build (0.0-fake" in text
    assert "| small | mixed | 200 | 2.00 | 53% | 1.50 | 0.02 |" in text


def test_report_has_the_deterministic_table_only_when_measured():
    info = {"date": "d", "cpu": "c", "threads": 2, "torch": "t", "transformers": "x",
            "python": "p", "repeat": 1, "cpu_flags": ["avx2", "amx_bf16"],
            "kernel_isa": "amx_bf16"}  # fmt: skip
    row = {"model": "small", "workload": "mixed", "sequences": 2, "tokens": 100,
           "engine_tok_s": 300.0, "hf_padded_tok_s": 100.0, "hf_bs1_tok_s": None,
           "x_hf_padded": 3.0, "x_hf_bs1": None, "engine_tokens_computed": 100,
           "prefix_cache_hit_rate": 0.0, "pct_roofline": 80.0,
           "max_abs_reward_diff_vs_hf": 0.01, "max_abs_hf_reward": 1.0}  # fmt: skip
    text = e2e.render_markdown(info, [row], {}, 4096)
    assert "Deterministic" not in text and "CPU flags avx2, amx_bf16; kernel ISA amx_bf16" in text
    row.update(deterministic_tok_s=200.0, deterministic_cost=1.5,
               deterministic_max_abs_reward_diff_vs_default=0.004,
               deterministic_max_abs_reward_diff_vs_hf=0.02)  # fmt: skip
    text = e2e.render_markdown(info, [row], {}, 4096)
    assert "| small | mixed | 300 | 200 | 1.50 | 2.00 | 0.004 | 0.02 (1) | - | - |" in text
    row.update(engine_runs_s=[1.0, 2.25], deterministic_runs_s=[3.0])
    assert "| 0.02 (1) | 1.0, 2.2 | 3.0 |" in e2e.render_markdown(info, [row], {}, 4096)
