"""The server app on Ray Serve (two replicas on a local Ray): /v1/score answers equal the
local engine's, and the deployment carries the max_ongoing_requests bound."""

from __future__ import annotations

import socket

import httpx
import pytest
import ray
from ray import serve

from engine import RewardEngine
from engine.cli import main
from engine.ray.serve import reward_app
from engine.server.config import ServerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    config = ServerConfig(model=str(tiny_checkpoint), dtype="float32", port=port,
                          engine_kwargs={"num_kv_blocks": 256, "num_threads": 1,
                                         "deterministic": True})  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(reward_app(config, replicas=2, max_ongoing_requests=4, num_cpus=0.5),
              name="reward-engine", route_prefix="/")  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.mark.slow
def test_replicas_answer_score_requests_as_the_local_engine(served, tiny_checkpoint):
    local = RewardEngine.from_pretrained(tiny_checkpoint, dtype="float32", num_kv_blocks=256,
                                         deterministic=True)  # fmt: skip
    with httpx.Client(base_url=served, timeout=120) as client:
        for k in range(6):
            responses = [f"{k} apples", "I cannot count."]
            r = client.post("/v1/score", json={"prompt": "How many apples?",
                                               "responses": responses})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["rewards"] == local.score_responses("How many apples?", responses)
        bad = client.post("/v1/score", json={"conversations": [[{"role": "robot",
                                                                  "content": "x"}]]})  # fmt: skip
        assert bad.status_code in (200, 400) and "robot" in bad.text
    status = serve.status().applications["reward-engine"].deployments["RewardServer"]
    assert status.replica_states.get("RUNNING") == 2


def test_serve_flags_need_ray(tiny_checkpoint, capsys):
    assert main(["serve", str(tiny_checkpoint), "--replicas", "2"]) == 2
    assert "--replicas applies to --ray" in capsys.readouterr().err


def test_the_deployment_bounds_requests_in_flight_per_replica():
    deployment = reward_app(ServerConfig(model="/shared/rm"), replicas=3, max_ongoing_requests=7,
                            num_cpus=0.5, num_gpus=1)._bound_deployment  # fmt: skip
    assert (deployment.num_replicas, deployment.max_ongoing_requests) == (3, 7)
    assert deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1}
