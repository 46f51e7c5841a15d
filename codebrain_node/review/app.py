"""The review web app: sign-in, the worklist, a study's inputs beside its synthetic series, approve / reject.

Server-rendered pages (Jinja2) and one small script; slices are PNGs rendered here from the stored DICOM.
Every path but ``/healthz`` and the sign-in page needs a signed-in user: pages redirect to ``/login``, anything
else answers 401 (the check is one middleware, so a new route cannot forget it). Every POST carries the
session's CSRF token. Approve and reject go through :mod:`codebrain_node.review.worklist` and so through the
state machine, which audits them with ``user:<name>`` as actor. Repeated failed sign-ins lock the user name, or
the client address, out for a while (:class:`~codebrain_node.review.auth.SignInThrottle`, counted in the
database). A session is a database row as well as a cookie: sign-out revokes it. The cookie is ``Secure`` whenever
the request came over TLS (uvicorn serving HTTPS, or a trusted proxy saying ``X-Forwarded-Proto: https``), and
always with ``review.cookie_secure``.

The routes live one router a concern (``routes_auth``, ``routes_worklist``, ``routes_images``,
``routes_monitoring``); this module builds the app, puts the shared state on ``app.state`` (read by
:mod:`codebrain_node.review.dependencies`) and guards every path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codebrain_node import __version__
from codebrain_node.config import Settings
from codebrain_node.review import auth, render, routes_auth, routes_images, routes_monitoring, routes_worklist
from codebrain_node.review.metrics import ReviewMetrics
from codebrain_node.review.pages import make_templates

HERE = Path(__file__).resolve().parent
#: Reachable without signing in (no patient data, no actions).
OPEN_PATHS = frozenset({"/healthz", "/login"})
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


def create_app(settings: Settings, factory: sessionmaker[Session], clock: Callable[[], float] = time.time) -> FastAPI:
    """The review app for ``settings`` on the database behind ``factory``; ``clock`` (wall-clock seconds: the
    lock-outs are kept in the database) times sign-in lock-outs."""
    review = settings.review
    app = FastAPI(title="codebrain-node review", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.templates = make_templates()
    app.state.metrics = ReviewMetrics(factory)
    app.state.geometries = render.GeometryCache()
    app.state.sign_in_throttle = auth.SignInThrottle.from_settings(review, clock, factory)

    # authentication on every path (inner), then the signed session cookie (outer) that it reads
    app.middleware("http")(require_sign_in)
    app.add_middleware(
        SessionMiddleware,
        secret_key=auth.session_secret(settings),
        session_cookie="codebrain_review",
        max_age=review.session_max_age_s,
        same_site="lax",
        https_only=review.cookie_secure,
    )
    app.add_middleware(SecureCookieOverTLS, trusted_proxies=tuple(review.trusted_proxies))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for routes in (routes_monitoring, routes_auth, routes_worklist, routes_images):
        app.include_router(routes.router)
    return app


async def require_sign_in(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Find the user (trusted proxy header, else the session), turn away anonymous requests, count every request."""
    started = time.perf_counter()
    review = request.app.state.settings.review
    metrics: ReviewMetrics = request.app.state.metrics
    client = request.client.host if request.client else None
    user = auth.user_from_trusted_header(
        review, client, request.headers.get(review.trusted_user_header) if review.trusted_user_header else None
    )
    if user is None and request.session.get("sid"):  # a session on record, neither revoked nor expired
        factory = request.app.state.session_factory
        name = await run_in_threadpool(auth.session_user_name, factory, request.session.get("sid"))
        user = auth.user_from_session(review, name)
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


def _local_path(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{request.url.path}{query}"


class SecureCookieOverTLS:
    """Marks every cookie ``Secure`` on a request that came over TLS: served as HTTPS (``scope["scheme"]``), or
    from one of ``trusted_proxies`` with ``X-Forwarded-Proto: https``. (SessionMiddleware's ``https_only`` is fixed
    at start; this follows each request.)"""

    def __init__(self, app: ASGIApp, trusted_proxies: tuple[str, ...] = ()) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._over_tls(scope):
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = []
                for name, value in message.get("headers", []):
                    if name.lower() == b"set-cookie" and b"secure" not in value.lower():
                        value += b"; secure"
                    headers.append((name, value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_secure)

    def _over_tls(self, scope: Scope) -> bool:
        if scope.get("scheme") == "https":
            return True
        client = scope.get("client")
        if not client or not auth.is_trusted_proxy(client[0], self.trusted_proxies):
            return False
        headers = dict(scope.get("headers", []))
        forwarded = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[0].strip().lower()
        return forwarded == "https"
