"""The reward server (engine/server) on Ray Serve: N replicas of the same app.

Each replica builds the server's FastAPI app with ``create_app(config)`` inside the
replica (Serve's ``__serve_build_asgi_app__``), so the app's lifespan loads the replica's
own engine, starts its loop and stops it, exactly as `reward-engine serve` does. Ray
Serve's proxy spreads requests over the replicas and holds at most
``max_ongoing_requests`` in flight per replica; past that, requests queue in the proxy
(up to ``max_queued_requests``, then Serve answers 503), and inside a replica the app's
own admission control (--max-queue, 503 with Retry-After) still applies.

    from engine.ray.serve import reward_app
    serve.run(reward_app(ServerConfig(model="/shared/my-rm"), replicas=4), route_prefix="/")
"""

from __future__ import annotations

import time

from ray import serve

from ..server.config import ServerConfig

DEFAULT_MAX_ONGOING_REQUESTS = 64


@serve.ingress()
class RewardServer:
    """One replica: the server app of ``config`` (its engine loaded by the lifespan)."""

    def __init__(self, config: ServerConfig):
        self.config = config

    def __serve_build_asgi_app__(self):
        from ..server.app import create_app

        return create_app(self.config)


def reward_app(config: ServerConfig, *, replicas: int = 1,
               max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
               max_queued_requests: int = -1, num_cpus: float = 1.0, num_gpus: float = 0.0,
               name: str = "RewardServer"):  # fmt: skip
    """The bound Serve application: ``replicas`` copies of the server app."""
    options = {"num_cpus": num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    deployment = serve.deployment(
        RewardServer, name=name, num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests, max_queued_requests=max_queued_requests,
        ray_actor_options=options,
        health_check_period_s=10, graceful_shutdown_timeout_s=config.request_timeout or 30.0,
    )  # fmt: skip
    return deployment.bind(config)


def run_serve(config: ServerConfig, *, replicas: int, max_ongoing_requests: int,
              num_cpus: float, num_gpus: float, blocking: bool = True) -> None:  # fmt: skip
    """Start Serve's HTTP proxy on config.host:config.port and the replicas; with
    ``blocking``, wait until interrupted, then shut the application down."""
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(reward_app(config, replicas=replicas, max_ongoing_requests=max_ongoing_requests,
                         num_cpus=num_cpus, num_gpus=num_gpus),
              name="reward-engine", route_prefix="/")  # fmt: skip
    if not blocking:
        return
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
