"""The worklist, a study's inputs beside its synthetic series, and the approve / reject actions.

Approve and reject go through :mod:`codebrain_node.review.worklist` and so through the state machine, which
audits them with ``user:<name>`` as actor; each POST is CSRF-checked first, then the user's right to review.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import Series, StudyState
from codebrain_node.review import auth, render
from codebrain_node.review.dependencies import AppSettings, CurrentUser, Database, Geometries, Metrics, check_csrf
from codebrain_node.review.metrics import ReviewMetrics
from codebrain_node.review.pages import flash, page
from codebrain_node.review.routes_images import instance_paths
from codebrain_node.review.worklist import (
    SORT_KEYS,
    ReviewError,
    StudyDetail,
    approve,
    list_worklist,
    reject,
    study_detail,
)

log = logging.getLogger(__name__)

router = APIRouter()

#: The input shown first beside a synthetic series, by preference (never the synthesised contrast itself).
INPUT_PREFERENCE = (Contrast.T1, Contrast.T2, Contrast.FLAIR, Contrast.T1GD, Contrast.PD)


@router.get("/")
def home() -> Response:
    return RedirectResponse("/worklist", status_code=303)


@router.get("/worklist", response_class=HTMLResponse)
def worklist_page(
    request: Request,
    factory: Database,
    status: str = "",
    contrast: str = "",
    q: str = "",
    sort: str = "age",
    order: str = "",
) -> HTMLResponse:
    descending = order == "desc"
    try:
        with factory() as session:
            rows = list_worklist(session, status or None, contrast or None, q or None, sort=sort, descending=descending)
    except (ReviewError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    filters = {"status": status, "contrast": contrast, "q": q}

    def sort_link(key: str) -> str:
        flip = "asc" if sort == key and descending else "desc" if sort == key else "asc"
        return "/worklist?" + urlencode({**{k: v for k, v in filters.items() if v}, "sort": key, "order": flip})

    return page(
        request,
        "worklist.html",
        rows=rows,
        filters=filters,
        sort=sort,
        descending=descending,
        sort_keys=SORT_KEYS,
        sort_link=sort_link,
        contrasts=[c.value for c in Contrast],
    )


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(
    request: Request, settings: AppSettings, factory: Database, geometries: Geometries, study_id: int
) -> HTMLResponse:
    with factory() as session:  # the page is rendered inside the session: the template reads the study's rows
        try:
            detail = study_detail(session, study_id)
        except ReviewError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        panels = [_panel(detail, series, geometries, settings) for series in detail.synthetic]
        return page(
            request,
            "study.html",
            detail=detail,
            study=detail.study,
            panels=panels,
            # approving sends the current series only; with every one superseded there is nothing to approve
            awaiting=StudyState(detail.study.state) is StudyState.AWAITING_REVIEW and bool(detail.synthetic),
        )


@router.post("/studies/{study_id}/approve")
def approve_action(
    request: Request,
    factory: Database,
    metrics: Metrics,
    user: CurrentUser,
    study_id: int,
    csrf_token: str = Form(""),
    reason: str = Form(""),
) -> Response:
    return _act(request, factory, metrics, user, study_id, csrf_token, reason, "approve")


@router.post("/studies/{study_id}/reject")
def reject_action(
    request: Request,
    factory: Database,
    metrics: Metrics,
    user: CurrentUser,
    study_id: int,
    csrf_token: str = Form(""),
    reason: str = Form(""),
) -> Response:
    return _act(request, factory, metrics, user, study_id, csrf_token, reason, "reject")


def _act(
    request: Request,
    factory: sessionmaker[Session],
    metrics: ReviewMetrics,
    user: auth.User,
    study_id: int,
    csrf_token: str,
    reason: str,
    action: str,
) -> Response:
    """Approve or reject in one transaction; a refusal (wrong state, say) is flashed on the study page."""
    check_csrf(request, csrf_token)
    if not user.may_review:
        metrics.actions.labels(action, "forbidden").inc()
        raise HTTPException(status_code=403, detail=f"{user.name} may look but not {action}")
    try:
        with factory() as session, session.begin():
            if action == "approve":
                approve(session, study_id, user.actor, reason)
            else:
                reject(session, study_id, user.actor, reason)
    except ReviewError as exc:
        metrics.actions.labels(action, "refused").inc()
        flash(request, "error", str(exc))
        return RedirectResponse(f"/studies/{study_id}", status_code=303)
    metrics.actions.labels(action, "ok").inc()
    done = "approved: the synthetic series are being sent" if action == "approve" else "rejected: nothing is sent"
    flash(request, "ok", f"Study {done}.")
    return RedirectResponse(f"/studies/{study_id}", status_code=303)


def _panel(
    detail: StudyDetail, synthetic: Series, geometries: render.GeometryCache, settings: Settings
) -> dict[str, Any]:
    """What the study page needs for one synthetic series: its slices, its candidate inputs, its confidence."""
    job = next((job for job in detail.jobs if synthetic.contrast in (job.targets or [])), None)
    job = job or (detail.jobs[0] if detail.jobs else None)
    used = set((job.inputs or {}).values()) if job else set()
    candidates = [s for s in detail.acquired if s.series_instance_uid in used] or [
        s for s in detail.acquired if s.contrast and s.contrast != "other"
    ]
    order = [c.value for c in INPUT_PREFERENCE]
    candidates.sort(key=lambda s: order.index(s.contrast) if s.contrast in order else len(order))
    preferred = [s for s in candidates if s.contrast != synthetic.contrast] or candidates
    panel: dict[str, Any] = {
        "series": synthetic,
        "inputs": [preferred[0], *[s for s in candidates if s is not preferred[0]]] if preferred else [],
        "job": job,
        "error": None,
        "positions": [],
        "level": None,
        "width": None,
        "confidence": None,
    }
    try:
        geometry = geometries.get(synthetic.id, instance_paths(synthetic, settings))
    except render.RenderError as exc:
        panel["error"] = str(exc)
        return panel
    panel["positions"] = [list(ref.position) if ref.position else None for ref in geometry.slices]
    panel["level"], panel["width"] = round(geometry.default_level, 1), round(geometry.default_width, 1)
    panel["input_windows"] = {}
    for candidate in panel["inputs"]:
        try:
            input_geometry = geometries.get(candidate.id, instance_paths(candidate, settings))
            panel["input_windows"][candidate.id] = (
                round(input_geometry.default_level, 1),
                round(input_geometry.default_width, 1),
            )
        except render.RenderError as exc:
            panel["input_windows"][candidate.id] = None
            log.warning("series %s cannot be shown: %s", candidate.series_instance_uid, exc)
    volume = render.load_confidence(geometry.slices[0].path.parent)
    if volume is not None:
        panel["confidence"] = float(np.nanmin(volume))  # the least sure region: where to look first
    return panel
