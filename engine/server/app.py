"""create_app(config, engine=None) -> FastAPI: the reward server as an ASGI app.

All state lives on ``app.state`` (config, scorer, metrics, drain flag), none in module
globals, so several apps can live in one process (tests) and a Ray Serve deployment
can wrap the app. The lifespan loads the engine from ``config.model`` when none is
given, starts its loop, and at shutdown waits for the requests in flight (up to the
request timeout) before stopping it.

Draining: ``begin_drain(app)`` (the serve command calls it on SIGTERM) turns readiness
false and refuses new requests with 503; once no request is in flight the app calls
``app.state.on_drained`` (the serve command's: tell uvicorn to exit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..async_engine import AsyncRewardEngine
from ..config import GIB
from ..hardware import dtype_name
from .config import ServerConfig
from .errors import install_error_handlers
from .metrics import ServerMetrics
from .middleware import ServerMiddleware
from .playground import mount_playground
from .routes import ROUTERS
from .scoring import ClientDisconnected, Scorer

logger = logging.getLogger("engine.server")

DESCRIPTION = """\
Reward model server: every request joins the engine's continuous batch and shares its
prefix cache. NIM (/v1/chat/completions), batch scoring (/v1/score), OpenRLHF
(/get_reward), vLLM classify (/classify), tokenization (/v1/tokenize), health, models
and Prometheus metrics. Errors are {"error": {"message", "type", "code"}}; 503 answers
carry Retry-After.
"""


def load_engine(config: ServerConfig) -> AsyncRewardEngine:
    """The engine the config describes (its queue bound is the admission ceiling)."""
    return AsyncRewardEngine.from_pretrained(
        config.model,
        dtype=config.dtype,
        max_num_batched_tokens=config.max_batch_tokens,
        max_num_seqs=config.max_num_seqs,
        max_waiting_requests=config.max_queue + config.max_items,
        **config.engine_kwargs,
    )


def create_app(config: ServerConfig, engine: AsyncRewardEngine | None = None) -> FastAPI:
    app = FastAPI(title="reward-engine", version=__version__, description=DESCRIPTION,
                  lifespan=_lifespan)  # fmt: skip
    state = app.state
    state.config = config
    state.engine = engine
    state.scorer = None
    state.metrics = ServerMetrics(config.max_queue)
    state.draining = False
    state.in_flight = 0
    state.on_drained = None
    state.started_at = int(time.time())
    state.documented_paths = None  # filled from the OpenAPI schema on first use
    for router in ROUTERS:
        app.include_router(router)
    mount_playground(app)  # the browser page at / and /playground
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected):
        return Response(status_code=499)  # nobody reads it; the log and metrics do

    app.add_middleware(ServerMiddleware, state=state)
    app.openapi = lambda: _openapi(app)
    state.openapi = app.openapi
    return app


def begin_drain(app: FastAPI) -> None:
    """Readiness false, new requests 503; on_drained runs once nothing is in flight.
    Safe to call from a signal handler (it only sets flags)."""
    app.state.draining = True


@asynccontextmanager
async def _lifespan(app: FastAPI):
    state = app.state
    config: ServerConfig = state.config
    engine = state.engine
    loaded_here = engine is None
    if loaded_here:
        engine = await asyncio.to_thread(load_engine, config)
        state.engine = engine
    _observe_steps(engine, state.metrics)
    state.metrics.bind_engine(engine)
    await engine.start()
    await _warm_up(engine)
    state.scorer = Scorer(engine, config)
    watcher = asyncio.create_task(_watch_drain(app))
    _banner(config, engine)
    try:
        yield
    finally:
        begin_drain(app)
        await _wait_idle(state, config.request_timeout or 30.0)
        watcher.cancel()
        await engine.stop()
        if loaded_here:
            engine.engine.close()  # a tensor-parallel engine's workers stop with the server
        logger.info("engine stopped")


async def _warm_up(engine: AsyncRewardEngine) -> None:
    """Score one short sequence before readiness turns true, so the first client does
    not pay for the kernels' first run; its cached blocks are dropped afterwards."""
    await engine.score_token_ids([0] * min(16, engine.engine.max_model_len))
    engine.engine.reset_prefix_cache()


async def _watch_drain(app: FastAPI) -> None:
    state = app.state
    while True:
        await asyncio.sleep(0.02)
        if state.scorer is not None:
            state.scorer.draining = state.draining
        if state.draining:
            state.metrics.draining.set(1)
            await _wait_idle(state, None)
            logger.info("drained: no request in flight")
            if state.on_drained is not None:
                state.on_drained()
            return


async def _wait_idle(state, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while state.in_flight > 0 and (deadline is None or time.monotonic() < deadline):
        await asyncio.sleep(0.01)


def _observe_steps(engine: AsyncRewardEngine, metrics: ServerMetrics) -> None:
    """Time each engine step: the loop hands every computed step to finish_step with
    its seconds, so wrapping that one method of this engine sees all of them."""
    core = engine.engine
    finish = core.finish_step

    def finish_step(out, rewards, errors, seconds):
        if not out.is_empty:
            metrics.observe_step(seconds, out.num_batched_tokens)
        return finish(out, rewards, errors, seconds)

    core.finish_step = finish_step


def _banner(config: ServerConfig, engine: AsyncRewardEngine) -> None:
    core = engine.engine
    kv = core.kv_cache
    auth = "API key required" if config.api_key else "no API key"
    logger.info(
        "serving %s as %r: dtype %s, max_model_len %d, %d label(s); KV pool %d blocks of %d "
        "tokens (%.2f GiB); max queue %d, max batch tokens %d; %s; http://%s:%d",
        config.model, config.model_name, dtype_name(core.model.dtype), core.max_model_len,
        core.num_labels, kv.num_blocks, kv.block_size, kv.nbytes / GIB, config.max_queue,
        config.max_batch_tokens, auth, config.host, config.port,
    )  # fmt: skip


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, without the 422 answers it documents by default: this server
    answers validation errors with 400 and the error object (documented per route)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)  # fmt: skip
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema
