"""The review web app: sign-in, the worklist, a study's inputs beside its synthetic series, approve / reject.

Server-rendered pages (Jinja2) and one small script; slices are PNGs rendered here from the stored DICOM.
Every path but ``/healthz`` and the sign-in page needs a signed-in user: pages redirect to ``/login``, anything
else answers 401 (the check is one middleware, so a new route cannot forget it). Every POST carries the
session's CSRF token. Approve and reject go through :mod:`codebrain_node.review.worklist` and so through the
state machine, which audits them with ``user:<name>`` as actor. Repeated failed sign-ins lock the user name, or
the client address, out for a while (:class:`~codebrain_node.review.auth.SignInThrottle`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from codebrain_node import __version__
from codebrain_node.config import Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.lifecycle import audit
from codebrain_node.db.models import Series, StudyState, as_utc
from codebrain_node.review import auth, render
from codebrain_node.review.metrics import ReviewMetrics
from codebrain_node.review.worklist import (
    SORT_KEYS,
    STATUS_LABELS,
    ReviewError,
    approve,
    format_age,
    list_worklist,
    reject,
    study_detail,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: Reachable without signing in (no patient data, no actions).
OPEN_PATHS = frozenset({"/healthz", "/login"})
#: The input shown first beside a synthetic series, by preference (never the synthesised contrast itself).
INPUT_PREFERENCE = (Contrast.T1, Contrast.T2, Contrast.FLAIR, Contrast.T1GD, Contrast.PD)
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


def create_app(
    settings: Settings, factory: sessionmaker[Session], clock: Callable[[], float] = time.monotonic
) -> FastAPI:
    """The review app for ``settings`` on the database behind ``factory``; ``clock`` times sign-in lock-outs."""
    review = settings.review
    app = FastAPI(title="codebrain-node review", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(status_labels=STATUS_LABELS, version=__version__, format_age=format_age)
    templates.env.filters["age"] = format_age
    templates.env.filters["when"] = lambda moment: as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""
    metrics = ReviewMetrics(factory)
    geometries = render.GeometryCache()
    app.state.metrics = metrics
    app.state.settings = settings
    throttle = auth.SignInThrottle.from_settings(review, clock)
    app.state.sign_in_throttle = throttle

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.update(
            user=getattr(request.state, "user", None),
            csrf_token=_csrf_token(request),
            flashes=request.session.pop("flash", []),
        )
        response = templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers["Cache-Control"] = "no-store"
        return response

    def flash(request: Request, kind: str, message: str) -> None:
        request.session["flash"] = [*request.session.get("flash", []), {"kind": kind, "message": message}]

    # --- middleware: authentication on every path (inner), then the signed session cookie (outer) -----------

    @app.middleware("http")
    async def require_sign_in(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        client = request.client.host if request.client else None
        user = auth.user_from_trusted_header(
            review, client, request.headers.get(review.trusted_user_header) if review.trusted_user_header else None
        ) or auth.user_from_session(review, request.session.get("user"))
        request.state.user = user
        path = request.url.path
        if user is None and path not in OPEN_PATHS:
            if path == "/metrics" and auth.may_read_metrics(review, client):
                response = await call_next(request)
            elif request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                response = RedirectResponse(f"/login?{urlencode({'next': _local_path(request)})}", status_code=303)
            else:
                response = PlainTextResponse("sign in first", status_code=401)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        route = request.scope.get("route")
        route_name = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, route_name, str(response.status_code)).inc()
        metrics.request_seconds.labels(route_name).observe(time.perf_counter() - started)
        return response

    app.add_middleware(
        SessionMiddleware,
        secret_key=auth.session_secret(settings),
        session_cookie="codebrain_review",
        max_age=review.session_max_age_s,
        same_site="lax",
        https_only=review.cookie_secure,
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # --- open ------------------------------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with factory() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/worklist") -> HTMLResponse:
        no_users = not any(user.password_hash for user in review.users)
        return page(request, "login.html", next=_safe_next(next), no_users=no_users)

    @app.post("/login")
    def login(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        csrf_token: str = Form(""),
        next: str = Form("/worklist"),
    ) -> Response:
        if not auth.csrf_matches(request.session.get("csrf"), csrf_token):
            metrics.actions.labels("sign_in", "csrf_refused").inc()
            return PlainTextResponse("invalid or missing CSRF token; reload the page", status_code=403)
        name = username.strip()
        peer = request.client.host if request.client else None
        client = auth.client_address(review, peer, request.headers.get("x-forwarded-for"))
        again = RedirectResponse(f"/login?{urlencode({'next': _safe_next(next)})}", status_code=303)
        locked = throttle.locked(name, client)
        if locked:  # refused before the password is checked: no Argon2 work, nothing learnt about the password
            with factory() as session, session.begin():
                audit(session, f"user:{name[:64]}", "sign_in_throttled", None, via="password", limit=locked)
            metrics.actions.labels("sign_in", "throttled").inc()
            log.warning("sign-in throttled for user %r from %s (%s locked out)", name[:64], client, locked)
            flash(request, "error", "Sign-in refused: too many failed sign-ins, try again later.")
            return again
        user = auth.authenticate(review, name, password)
        action = "sign_in" if user else "sign_in_failed"
        with factory() as session, session.begin():
            audit(session, f"user:{name[:64]}", action, None, via="password")
        if user is None:
            metrics.actions.labels("sign_in", "refused").inc()
            log.info("sign-in refused for user %r", name[:64])
            for kind in throttle.failed(name, client):
                log.warning("too many failed sign-ins: %s locked out (user %r, address %s)", kind, name[:64], client)
            flash(request, "error", "Unknown user or wrong password.")
            return again
        throttle.succeeded(name)
        metrics.actions.labels("sign_in", "ok").inc()
        request.session.clear()  # a fresh session (and CSRF token) at every sign-in
        request.session["user"] = user.name
        request.session["csrf"] = auth.new_csrf_token()
        return RedirectResponse(_safe_next(next), status_code=303)

    # --- signed in -------------------------------------------------------------------------------------------

    @app.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        _check_csrf(request, csrf_token)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/worklist", status_code=303)

    @app.get("/worklist", response_class=HTMLResponse)
    def worklist_page(
        request: Request, status: str = "", contrast: str = "", q: str = "", sort: str = "age", order: str = ""
    ) -> HTMLResponse:
        descending = order == "desc"
        try:
            with factory() as session:
                rows = list_worklist(
                    session, status or None, contrast or None, q or None, sort=sort, descending=descending
                )
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

    @app.get("/studies/{study_id}", response_class=HTMLResponse)
    def study_page(request: Request, study_id: int) -> HTMLResponse:
        with factory() as session:
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
                awaiting=StudyState(detail.study.state) is StudyState.AWAITING_REVIEW,
            )

    @app.get("/studies/{study_id}/series/{series_id}/slice.png")
    def slice_png(
        study_id: int,
        series_id: int,
        index: int | None = None,
        near: str | None = None,
        level: float | None = None,
        width: float | None = None,
    ) -> Response:
        with factory() as session:
            series = _series_of_study(session, study_id, series_id)
            paths = _instance_paths(series, settings)
        try:
            geometry = geometries.get(series_id, paths)
            position = _slice_index(geometry, index, near)
            pixels = render.read_slice(geometry.slices[position])
        except render.RenderError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        png = render.window_to_png(
            pixels,
            geometry.default_level if level is None else level,
            geometry.default_width if width is None else width,
        )
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/studies/{study_id}/series/{series_id}/confidence.png")
    def confidence_png(study_id: int, series_id: int, index: int = 0, opacity: float = 0.6) -> Response:
        with factory() as session:
            series = _series_of_study(session, study_id, series_id)
            if not series.is_synthetic:
                raise HTTPException(status_code=404, detail="only synthetic series have a confidence map")
            paths = _instance_paths(series, settings)
        try:
            geometry = geometries.get(series_id, paths)
            position = _slice_index(geometry, index, None)
            ref = geometry.slices[position]
            volume = render.load_confidence(ref.path.parent)
            if volume is None:
                raise HTTPException(status_code=404, detail="this series has no confidence map")
            shape = render.read_slice(ref).shape
            plane = render.confidence_slice(volume, ref, position, (int(shape[0]), int(shape[1])))
        except render.RenderError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return Response(
            render.confidence_to_png(plane, opacity),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=300"},
        )

    def _act(request: Request, study_id: int, csrf_token: str, reason: str, action: str) -> Response:
        _check_csrf(request, csrf_token)
        user: auth.User = request.state.user
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

    @app.post("/studies/{study_id}/approve")
    def approve_action(request: Request, study_id: int, csrf_token: str = Form(""), reason: str = Form("")) -> Response:
        return _act(request, study_id, csrf_token, reason, "approve")

    @app.post("/studies/{study_id}/reject")
    def reject_action(request: Request, study_id: int, csrf_token: str = Form(""), reason: str = Form("")) -> Response:
        return _act(request, study_id, csrf_token, reason, "reject")

    return app


# --- helpers ---------------------------------------------------------------------------------------------------


def _csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use, so the sign-in form carries one too)."""
    token = request.session.get("csrf")
    if not token:
        token = auth.new_csrf_token()
        request.session["csrf"] = token
    return token


def _check_csrf(request: Request, given: str) -> None:
    if not auth.csrf_matches(request.session.get("csrf"), given):
        request.app.state.metrics.actions.labels("csrf", "refused").inc()
        raise HTTPException(status_code=403, detail="invalid or missing CSRF token; reload the page")


def _local_path(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{request.url.path}{query}"


def _safe_next(target: str) -> str:
    """Only same-site paths: ``/worklist`` yes, ``//evil.example`` and ``https://...`` no."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/worklist"
    return quote(target, safe="/?=&%:+,.-_~")


def _series_of_study(session: Session, study_id: int, series_id: int) -> Series:
    series = session.scalars(select(Series).where(Series.id == series_id, Series.study_id == study_id)).one_or_none()
    if series is None:
        raise HTTPException(status_code=404, detail="no such series in this study")
    _ = series.instances  # load while the session is open
    return series


def _instance_paths(series: Series, settings: Settings) -> list[Path]:
    return [instance.file_in(settings.paths.data_dir) for instance in series.instances]


def _slice_index(geometry: render.SeriesGeometry, index: int | None, near: str | None) -> int:
    if near:
        try:
            x, y, z = (float(part) for part in near.split(","))
        except ValueError:
            raise HTTPException(status_code=400, detail="near must be x,y,z in mm") from None
        return geometry.nearest_to((x, y, z))
    return int(np.clip(index or 0, 0, len(geometry.slices) - 1))


def _panel(detail: Any, synthetic: Series, geometries: render.GeometryCache, settings: Settings) -> dict[str, Any]:
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
        geometry = geometries.get(synthetic.id, _instance_paths(synthetic, settings))
    except render.RenderError as exc:
        panel["error"] = str(exc)
        return panel
    panel["positions"] = [list(ref.position) if ref.position else None for ref in geometry.slices]
    panel["level"], panel["width"] = round(geometry.default_level, 1), round(geometry.default_width, 1)
    panel["input_windows"] = {}
    for candidate in panel["inputs"]:
        try:
            input_geometry = geometries.get(candidate.id, _instance_paths(candidate, settings))
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
