"""`reward-engine serve`: the command line and the uvicorn runner."""

from __future__ import annotations

import argparse
import logging
import signal

from .config import API_KEY_ENV, ServerConfig

logger = logging.getLogger("engine.server")

SERVE_DESCRIPTION = f"""\
Serve a reward model over HTTP. Every request joins the engine's continuous batch and
shares its prefix cache.

Endpoints:
  POST /v1/chat/completions  NVIDIA NIM's reward API: messages ending with the assistant
                             turn; content "reward:<float>" (multi-attribute heads:
                             "name:value,..."), also in logprobs; works with the openai client
  POST /v1/score             batch: {{"conversations": [...]}}, {{"prompt", "responses"}} or
                             {{"token_ids": [...]}} -> {{"rewards": [...]}}; a bad item gets
                             {{"error": ...}} in its place
  POST /get_reward           OpenRLHF's remote reward model ({{"query": [texts]}})
  POST /classify             vLLM's classify API, as verl calls it ("use_activation": false
                             for raw rewards)
  POST /v1/tokenize          the formatted text and token ids scoring reads
  GET  /v1/models, /v1/health/live, /v1/health/ready (/health), /metrics (Prometheus),
       /openapi.json, /docs

Under load: a request that would push the engine's waiting queue past --max-queue
sequences gets 503 with Retry-After at once; a request not done within
--request-timeout gets 504 (sequences not started by then are never computed); a client
that disconnects cancels its sequences. SIGTERM (or Ctrl-C) drains: readiness turns
false, new requests get 503, requests in flight finish, then the process exits 0; a
second signal exits at once.

With --api-key (or {API_KEY_ENV}) every endpoint but health, docs and the schema needs
'Authorization: Bearer KEY'. The server binds to 127.0.0.1 unless --host says otherwise.
"""

SERVE_EPILOG = """\
examples:
  reward-engine serve ./my-reward-model
  reward-engine serve ./my-rm-engine --host 0.0.0.0 --port 8000 --api-key "$KEY" \\
      --max-queue 512 --request-timeout 60 --served-model-name my-rm
  curl -s localhost:8000/v1/score -d '{"prompt": "2+2?", "responses": ["4", "5"]}'
  reward-engine serve /shared/my-rm --ray --replicas 4 --gpus-per-replica 1 --host 0.0.0.0
"""


def add_serve_command(commands, add_dtype_argument, positive_int) -> None:
    d = ServerConfig(model="")
    p = commands.add_parser(
        "serve", help="serve a reward model over HTTP (NIM, OpenRLHF, vLLM-compatible)",
        description=SERVE_DESCRIPTION, epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL_OR_ENGINE_DIR",
                   help="HF checkpoint directory or engine directory")  # fmt: skip
    p.add_argument("--host", default=d.host, help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port,
                   help="port (default: %(default)s; 0: any free port)")  # fmt: skip
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, "
                   "else no key)")  # fmt: skip
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue, metavar="N",
                   help="sequences that may wait for the engine; past it, 503 + Retry-After "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--max-batch-tokens", type=positive_int, default=d.max_batch_tokens,
                   metavar="N", help="tokens per forward pass (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-num-seqs", type=positive_int, default=d.max_num_seqs, metavar="N",
                   help="sequences running at once (default: %(default)s)")  # fmt: skip
    p.add_argument("--request-timeout", type=_seconds, default=d.request_timeout, metavar="S",
                   help="seconds before a request gets 504; 0: no limit "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--max-request-bytes", type=positive_int, default=d.max_request_bytes,
                   metavar="N", help="largest body; past it, 413 (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-items", type=positive_int, default=d.max_items, metavar="N",
                   help="most sequences in one request; past it, 413 (default: "
                   "%(default)s)")  # fmt: skip
    p.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model's name in /v1/models and answers (default: the path)",
    )
    add_dtype_argument(p)
    p.add_argument(
        "--kv-cache-dtype",
        choices=("auto", "fp8"),
        help="KV cache storage (default: the engine directory's, else auto)",
    )
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        metavar="GIB",
        help="KV cache pool size (default: the engine's for this machine)",
    )
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads (default: torch's)")  # fmt: skip
    p.add_argument("--deterministic", action="store_true",
                   help="batch-invariant mode: a reward is the same bits whatever else is in "
                   "the batch (slower; see the README)")  # fmt: skip
    p.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N",
                   help="shard the model over N devices (default: %(default)s)")  # fmt: skip
    p.add_argument("--no-verify", action="store_true",
                   help="engine directories: skip the sha256 check of the files")  # fmt: skip
    ray = p.add_argument_group(
        "replicas on Ray Serve (pip install 'reward-engine[ray]')",
        "--ray runs --replicas copies of this server (each with its own engine) behind Ray "
        "Serve's HTTP proxy on --host/--port; each replica takes at most "
        "--max-ongoing-requests requests at once, more wait in the proxy. The model must "
        "be at the same path on every node.",
    )
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve (see above)")
    ray.add_argument("--replicas", type=positive_int, default=1, metavar="N",
                     help="server replicas (default: %(default)s)")  # fmt: skip
    ray.add_argument("--max-ongoing-requests", type=positive_int, default=64, metavar="N",
                     help="requests in flight per replica (default: %(default)s)")  # fmt: skip
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C",
                     help="CPUs Ray reserves per replica (default: %(default)s)")  # fmt: skip
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G",
                     help="GPUs per replica (default: none)")  # fmt: skip
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="cluster to join (default: $RAY_ADDRESS, else a local Ray)")  # fmt: skip
    p.set_defaults(run=run_serve)


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or positive, got {text}")
    return value or None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    engine_kwargs = {"verify": not args.no_verify}
    if args.kv_cache_dtype:
        engine_kwargs["kv_cache_dtype"] = args.kv_cache_dtype
    if args.threads:
        engine_kwargs["num_threads"] = args.threads
    if args.kv_cache_gib:
        engine_kwargs["kv_cache_gib"] = args.kv_cache_gib
    if args.deterministic:
        engine_kwargs["deterministic"] = True
    if args.tensor_parallel_size != 1:  # only engines with tensor parallelism take it
        engine_kwargs["tensor_parallel_size"] = args.tensor_parallel_size
    return ServerConfig(
        model=args.model, host=args.host, port=args.port, api_key=args.api_key,
        max_queue=args.max_queue, max_batch_tokens=args.max_batch_tokens,
        max_num_seqs=args.max_num_seqs, request_timeout=args.request_timeout,
        max_request_bytes=args.max_request_bytes, max_items=args.max_items,
        served_model_name=args.served_model_name, dtype=args.dtype,
        engine_kwargs=engine_kwargs,
    ).with_env_api_key()  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    from ..cli import UsageError, _check_model_dir

    _check_model_dir(args.model)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.ray:
        try:
            from ..ray.cli import run_ray_serve
        except ImportError as exc:
            raise UsageError(str(exc)) from None
        return run_ray_serve(args, config)
    if args.replicas != 1:
        raise UsageError("--replicas applies to --ray")
    from .app import load_engine

    try:
        engine = load_engine(config)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UsageError(f"cannot load the model from {args.model}: {exc}") from None
    return serve(config, engine)


def serve(config: ServerConfig, engine=None) -> int:
    """Run the app under uvicorn until a signal drains it; returns the exit status."""
    import uvicorn

    from .app import begin_drain, create_app

    app = create_app(config, engine)
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                               access_log=False, lifespan="on",
                               timeout_graceful_shutdown=None)  # fmt: skip
    server = _draining_server(uv_config, app, begin_drain)
    app.state.on_drained = server.drained
    server.run()
    return 0 if server.started else 1


def _draining_server(uv_config, app, begin_drain):
    """uvicorn's server with a drain before exit: the first SIGTERM/SIGINT only begins
    the drain (the app says when it is done), a second one exits at once. The signal is
    not re-raised after shutdown, so a drained server exits 0."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        signals = 0

        def handle_exit(self, sig, frame) -> None:
            self.signals += 1
            if self.signals == 1 and self.started:
                logger.info("received %s: draining (readiness false, new requests get 503)",
                            signal.Signals(sig).name)  # fmt: skip
                begin_drain(app)
                return
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        def drained(self) -> None:
            self.should_exit = True

    return DrainingServer(uv_config)
