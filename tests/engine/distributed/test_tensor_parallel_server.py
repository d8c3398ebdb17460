"""The HTTP server on a tensor-parallel engine: engine_kwargs pass tensor_parallel_size
through, rewards equal the single-process engine's, and the workers stop with the app."""

from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from engine import RewardEngine  # noqa: E402
from engine.server.app import create_app  # noqa: E402
from engine.server.config import ServerConfig  # noqa: E402

TP_FP32_RTOL = 1e-5  # as in test_tensor_parallel.py
CONVS = [
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Nine."}],
]


def test_the_server_runs_a_tp2_engine_and_stops_its_workers(make_tiny_checkpoint):
    ckpt = make_tiny_checkpoint(num_attention_heads=8, num_key_value_heads=2)
    with RewardEngine.from_pretrained(ckpt, "float32", num_kv_blocks=64) as reference:
        want = reference.score(CONVS)
    config = ServerConfig(model=str(ckpt), dtype="float32",
                          engine_kwargs={"tensor_parallel_size": 2, "num_kv_blocks": 64})  # fmt: skip

    async def main():
        app = create_app(config)
        async with app.router.lifespan_context(app):
            executor = app.state.engine.engine.parallel
            assert executor.workers_alive == [True]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                body = (await c.post("/v1/score", json={"conversations": CONVS})).json()
        return body, executor

    body, executor = asyncio.run(main())
    scale = max(abs(r) for r in want)
    assert max(abs(a - b) for a, b in zip(body["rewards"], want, strict=True)) <= (
        TP_FP32_RTOL * scale
    )
    assert executor.workers_alive == [False]  # the lifespan closed the engine it loaded
