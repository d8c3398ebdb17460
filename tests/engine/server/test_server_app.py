"""create_app in-process (httpx's ASGI transport, the lifespan run by hand): a
multi-attribute head's answers on every endpoint, the lifespan's engine handling, and
the config record. The behaviour over real sockets is tested against server processes
in the other modules."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from server_testing import assert_close

from engine import AsyncRewardEngine, RewardEngine
from engine.server.app import create_app
from engine.server.config import ServerConfig

LABELS = ["helpfulness", "correctness", "coherence"]
CONV = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def multi_dir(make_tiny_checkpoint):
    return make_tiny_checkpoint(num_labels=3, id2label=dict(enumerate(LABELS)),
                                label2id={n: i for i, n in enumerate(LABELS)})  # fmt: skip


def serve_in_process(config: ServerConfig, engine=None):
    """Run `calls(client)` against the app with its lifespan; returns its result."""

    def run(calls):
        async def main():
            app = create_app(config, engine)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                    return await calls(c), app

        return asyncio.run(main())

    return run


def test_multi_attribute_head_on_every_endpoint(multi_dir):
    reference = RewardEngine.from_pretrained(multi_dir, dtype="float32", kv_cache_gib=0.05)
    expected = reference.score([CONV])[0]
    text = reference.chat.render(CONV)
    config = ServerConfig(model=str(multi_dir), dtype="float32",
                          engine_kwargs={"kv_cache_gib": 0.05})  # fmt: skip

    async def calls(c):
        return [
            (await c.post("/v1/chat/completions", json={"messages": CONV})).json(),
            (await c.post("/v1/score", json={"conversations": [CONV]})).json(),
            (await c.post("/get_reward", json={"query": [text]})).json(),
            (await c.post("/classify", json={"input": text})).json(),
            (await c.get("/v1/models")).json(),
        ]

    (chat, score, openrlhf, classify, models), _ = serve_in_process(config)(calls)
    content = chat["choices"][0]["message"]["content"]
    names = [pair.split(":")[0] for pair in content.split(",")]
    assert names == LABELS
    assert_close([float(p.split(":")[1]) for p in content.split(",")], expected)
    logprobs = chat["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in logprobs] == LABELS
    assert_close([e["logprob"] for e in logprobs], expected)
    assert_close(score["rewards"][0], expected)
    assert_close(openrlhf["rewards"], expected[:1])  # the first attribute
    assert sorted(openrlhf["extra_logs"]) == sorted(LABELS)
    assert_close([openrlhf["extra_logs"][n][0] for n in LABELS], expected)
    top = max(expected)
    softmax = [math.exp(v - top) / sum(math.exp(x - top) for x in expected) for v in expected]
    data = classify["data"][0]
    assert data["num_classes"] == 3 and data["label"] == LABELS[expected.index(top)]
    assert_close(data["probs"], softmax)
    assert models["data"][0]["labels"] == LABELS and models["data"][0]["num_labels"] == 3


def test_the_lifespan_starts_and_stops_a_given_engine(tiny_checkpoint):
    engine = AsyncRewardEngine.from_pretrained(tiny_checkpoint, dtype="float32",
                                               kv_cache_gib=0.05)  # fmt: skip
    config = ServerConfig(model=str(tiny_checkpoint), served_model_name="given")

    async def calls(c):
        assert engine.is_running
        return (await c.get("/v1/health/ready")).json(), (await c.get("/v1/models")).json()

    (ready, models), app = serve_in_process(config, engine)(calls)
    assert ready == {"status": "ready"} and models["data"][0]["id"] == "given"
    assert not engine.is_running  # stopped by the lifespan's exit
    assert app.state.engine is engine


def test_apps_keep_their_state_apart():
    a = create_app(ServerConfig(model="a", max_queue=3))
    b = create_app(ServerConfig(model="b", max_queue=5))
    assert a.state.metrics is not b.state.metrics
    assert a.state.config.max_queue == 3 and b.state.config.max_queue == 5


@pytest.mark.parametrize("kwargs, says", [
    ({"max_queue": 0}, "max_queue"),
    ({"max_items": True}, "max_items"),
    ({"port": 70000}, "port"),
    ({"request_timeout": -1.0}, "request_timeout"),
])  # fmt: skip
def test_config_rejects_bad_values(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ServerConfig(model="m", **kwargs)


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("REWARD_ENGINE_API_KEY", "from-env")
    assert ServerConfig(model="m").with_env_api_key().api_key == "from-env"
    assert ServerConfig(model="m", api_key="given").with_env_api_key().api_key == "given"


def test_serve_command_line(capsys, tmp_path):
    from engine.cli import build_parser, main
    from engine.server.cli import config_from_args

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["serve", "--help"]) == 0
    help_text = capsys.readouterr().out
    for words in ("/v1/chat/completions", "/get_reward", "/classify", "Retry-After", "SIGTERM"):
        assert words in help_text
    args = build_parser().parse_args(["serve", "m", "--request-timeout", "0", "--max-queue", "7",
                                      "--deterministic", "--kv-cache-gib", "0.5"])  # fmt: skip
    config = config_from_args(args)
    assert config.host == "127.0.0.1" and config.port == 8000 and config.dtype == "auto"
    assert config.request_timeout is None and config.max_queue == 7
    assert config.engine_kwargs == {"verify": True, "deterministic": True, "kv_cache_gib": 0.5}
