"""For the operators' tools, not the radiologists: ``/healthz`` (open to all) and ``/metrics`` (Prometheus).

``/healthz`` answers without a sign-in and carries no patient data; ``/metrics`` needs a user or an address
in ``review.metrics_allowed_hosts`` (a Prometheus server; the sign-in middleware decides).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from codebrain_node import __version__
from codebrain_node.review.dependencies import Database, Metrics

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/healthz")
def healthz(factory: Database) -> JSONResponse:
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health check: database unreachable: %s", type(exc).__name__)
        return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok", "version": __version__})


@router.get("/metrics")
def metrics_endpoint(metrics: Metrics) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
