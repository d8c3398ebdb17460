"""Prometheus metrics of the server and its engine, one registry per app.

Request counters and histograms are updated as requests finish (by the middleware);
engine state (queue, KV blocks, token and prefix-cache counters) is read from
``AsyncRewardEngine.metrics()`` at each scrape by a custom collector, so it is never
stale and costs nothing between scrapes. Step times are observed as the engine loop
finishes each step.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "reward_engine"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)  # fmt: skip
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# engine.metrics() key -> (metric name, help, kind)
_ENGINE_METRICS = {
    "num_waiting": ("requests_waiting", "sequences queued for the engine", "gauge"),
    "num_running": ("requests_running", "sequences admitted (holding KV blocks)", "gauge"),
    "num_finished": ("sequences_finished", "sequences scored", "counter"),
    "num_failed": (
        "sequences_failed",
        "sequences that ended with an error (timeouts included)",
        "counter",
    ),  # fmt: skip
    "num_cancelled": (
        "sequences_cancelled",
        "sequences withdrawn by their caller (disconnects included)",
        "counter",
    ),  # fmt: skip
    "num_preemptions": ("preemptions", "sequences preempted for KV blocks", "counter"),
    "tokens_requested": ("tokens_requested", "tokens of the sequences scored", "counter"),
    "tokens_computed": (
        "tokens_computed",
        "tokens run through the model (requested minus prefix-cache hits)",
        "counter",
    ),  # fmt: skip
    "prefix_cache_query_tokens": (
        "prefix_cache_query_tokens",
        "tokens looked up in the prefix cache",
        "counter",
    ),  # fmt: skip
    "prefix_cache_hit_tokens": (
        "prefix_cache_hit_tokens",
        "tokens found in the prefix cache",
        "counter",
    ),  # fmt: skip
    "prefix_cache_hit_rate": (
        "prefix_cache_hit_rate",
        "prefix-cache hit tokens / query tokens since start",
        "gauge",
    ),  # fmt: skip
    "blocks_total": ("kv_blocks_total", "KV cache blocks in the pool", "gauge"),
    "blocks_used": ("kv_blocks_used", "KV cache blocks held by sequences", "gauge"),
    "blocks_cached": ("kv_blocks_cached", "free KV blocks kept for the prefix cache", "gauge"),
    "block_usage": ("kv_block_usage", "KV blocks used / total", "gauge"),
    "model_steps": ("model_steps", "forward passes run", "counter"),
}


class ServerMetrics:
    """The app's metrics. ``bind(scorer, in_flight)`` attaches the engine gauges."""

    def __init__(self, max_queue: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)  # fmt: skip
        self.errors = Counter(f"{PREFIX}_http_errors", "HTTP errors by kind (the error code)",
                              ["kind"], registry=r)  # fmt: skip
        self.latency = Histogram(f"{PREFIX}_http_request_duration_seconds", "request latency "
                                 "(arrival to answer) by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.items = Counter(f"{PREFIX}_http_items", "sequences asked for, by route", ["route"],
                             registry=r)  # fmt: skip
        self.prompt_tokens = Counter(f"{PREFIX}_http_prompt_tokens", "tokens of the scored "
                                     "sequences, by route", ["route"], registry=r)  # fmt: skip
        self.step_time = Histogram(f"{PREFIX}_step_duration_seconds", "time of one engine "
                                   "step (a forward pass)", buckets=STEP_BUCKETS,
                                   registry=r)  # fmt: skip
        self.step_tokens = Histogram(f"{PREFIX}_step_tokens", "tokens in one engine step",
                                     buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384),
                                     registry=r)  # fmt: skip
        self.queue_capacity = Gauge(f"{PREFIX}_queue_capacity", "sequences that may wait "
                                    "(--max-queue)", registry=r)  # fmt: skip
        self.queue_capacity.set(max_queue)
        self.in_flight = Gauge(f"{PREFIX}_http_requests_in_flight", "HTTP requests being "
                               "answered", registry=r)  # fmt: skip
        self.draining = Gauge(f"{PREFIX}_draining", "1 while the server shuts down",
                              registry=r)  # fmt: skip

    def bind_engine(self, engine) -> None:
        self.registry.register(_EngineCollector(engine))

    def observe_step(self, seconds: float, tokens: int) -> None:
        self.step_time.observe(seconds)
        self.step_tokens.observe(tokens)


class _EngineCollector:
    """Reads the engine's counters at scrape time."""

    def __init__(self, engine):
        self.engine = engine

    def describe(self):
        return []  # no fixed description: the families are produced at collect time

    def collect(self):
        values = self.engine.metrics()
        for key, (name, help_text, kind) in _ENGINE_METRICS.items():
            if key not in values:
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"{PREFIX}_{name}", help_text, value=float(values[key]))
