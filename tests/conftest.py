"""Shared fixtures: small seeded checkpoints saved with transformers' save_pretrained.

Checkpoints are built once per test session and cached by their settings.
"""

from __future__ import annotations

import os

import torch

# Triton fixes its mode when it is first imported (transformers' model imports pull it
# in): on a machine without a GPU, the triton backend's tests run its kernels on CPU
# tensors in Triton's interpreter, which must therefore be switched on before any
# import below. With a GPU the kernels compile and the interpreter tests skip.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests build hundreds of engines on the default CPU pool (up to 2 GiB); zeroing each
# at startup would add most of a minute to the suite. The pretouch path has its own
# test (tests/engine/test_runner.py).
os.environ.setdefault("REWARD_ENGINE_KV_CACHE_PRETOUCH", "0")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI replays the same examples on every run, so a submission is judged on a fixed set;
# local runs keep exploring new random examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from engine.demo import make_checkpoint  # noqa: E402

# Small enough to build and run in well under a second on 2 cores.
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=16384,
)


@pytest.fixture(scope="session")
def make_tiny_checkpoint(tmp_path_factory):
    """Factory: make_tiny_checkpoint(**overrides) -> checkpoint dir (cached per settings)."""
    cache: dict[str, object] = {}

    def make(**overrides):
        key = repr(sorted(overrides.items()))
        if key not in cache:
            settings = {**TINY, **overrides}
            out = tmp_path_factory.mktemp("ckpt")
            cache[key] = make_checkpoint(out, **settings)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_tiny_checkpoint):
    """A tiny LlamaForSequenceClassification checkpoint with the real Llama-3 tokenizer."""
    return make_tiny_checkpoint()


_NEEDS_GPU = ("gpu", "cuda")


def pytest_collection_modifyitems(config, items):
    """Every test that skips for want of a GPU must carry the `gpu` marker: that marker
    is how bench/gpu_check.sh (pytest -m gpu) finds the tests to run on a GPU machine,
    and an unmarked one would silently never run anywhere."""
    unmarked = []
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            continue
        for mark in item.iter_markers("skipif"):
            reason = str(mark.kwargs.get("reason", "")).lower()
            condition = mark.args[0] if mark.args else mark.kwargs.get("condition", False)
            if condition is True and any(word in reason for word in _NEEDS_GPU):
                unmarked.append(item.nodeid)
                break
    if unmarked:
        raise pytest.UsageError(
            "these tests skip without a GPU but are not marked `gpu`, so bench/gpu_check.sh "
            "would never run them; add pytest.mark.gpu: " + ", ".join(unmarked[:10])
        )
