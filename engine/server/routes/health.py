"""Health (NIM's names, plus /health), /v1/models and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...hardware import dtype_name
from ..schemas import ErrorResponse, Health, ModelList
from .common import get_scorer

router = APIRouter(tags=["health and models"])

_NOT_READY = {503: {"model": Health, "description": "loading, draining or stopped"}}


@router.get("/v1/health/live", response_model=Health, summary="The process is up")
async def live():
    return {"status": "live"}


@router.get("/v1/health/ready", response_model=Health, responses=_NOT_READY,
            summary="The engine takes requests")  # fmt: skip
@router.get("/health", response_model=Health, responses=_NOT_READY,
            summary="Alias of /v1/health/ready")  # fmt: skip
async def ready(request: Request):
    state = request.app.state
    scorer = getattr(state, "scorer", None)
    if state.draining:
        status = "draining"
    elif scorer is None:
        status = "starting"
    elif not scorer.async_engine.is_running:
        status = "stopped"
    else:
        return {"status": "ready"}
    return JSONResponse({"status": status}, status_code=503)


_AUTH = {
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    503: {"model": ErrorResponse, "description": "the engine is still loading"},
}


@router.get("/v1/models", response_model=ModelList, responses=_AUTH,
            summary="The served model")  # fmt: skip
async def models(request: Request):
    scorer = get_scorer(request)
    config = scorer.config
    return {"data": [{
        "id": config.model_name, "created": request.app.state.started_at, "root": config.model,
        "max_model_len": scorer.max_model_len, "num_labels": scorer.num_labels,
        "labels": scorer.labels, "dtype": dtype_name(scorer.engine.model.dtype),
    }]}  # fmt: skip


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}, **_AUTH})  # fmt: skip
async def metrics(request: Request):
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
