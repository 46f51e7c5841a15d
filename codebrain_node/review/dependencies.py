"""What a route handler takes from the app: its shared state, the signed-in user, the CSRF token and check.

:func:`~codebrain_node.review.app.create_app` puts one of each on ``app.state``; handlers ask for them by type
(``factory: Database``) instead of closing over them, so each router is a plain module. The accessors are
``async`` so FastAPI calls them on the event loop rather than spending a worker thread on an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.review import auth, render
from codebrain_node.review.metrics import ReviewMetrics


async def app_settings(request: Request) -> Settings:
    """The node's settings, read once at start."""
    return request.app.state.settings


async def session_factory(request: Request) -> sessionmaker[Session]:
    """The session factory: handlers open their own sessions, so each one chooses where its transaction ends."""
    return request.app.state.session_factory


async def review_metrics(request: Request) -> ReviewMetrics:
    """This app's Prometheus registry and counters."""
    return request.app.state.metrics


async def geometry_cache(request: Request) -> render.GeometryCache:
    """Series geometries shared by the study page and the slice images, so headers are read once per series."""
    return request.app.state.geometries


async def sign_in_throttle(request: Request) -> auth.SignInThrottle:
    """The failed sign-in counts, shared by every request to this app."""
    return request.app.state.sign_in_throttle


async def current_user(request: Request) -> auth.User:
    """The user the sign-in middleware found; it has already answered 401 to anyone else on a guarded path."""
    user: auth.User | None = getattr(request.state, "user", None)
    if user is None:
        raise HTTPException(status_code=401, detail="sign in first")
    return user


AppSettings = Annotated[Settings, Depends(app_settings)]
Database = Annotated[sessionmaker[Session], Depends(session_factory)]
Metrics = Annotated[ReviewMetrics, Depends(review_metrics)]
Geometries = Annotated[render.GeometryCache, Depends(geometry_cache)]
Throttle = Annotated[auth.SignInThrottle, Depends(sign_in_throttle)]
CurrentUser = Annotated[auth.User, Depends(current_user)]


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use, so the sign-in form carries one too)."""
    token = request.session.get("csrf")
    if not token:
        token = auth.new_csrf_token()
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, given: str) -> None:
    """Refuse a POST whose form token is not the session's; called first in each handler, before any other check."""
    if not auth.csrf_matches(request.session.get("csrf"), given):
        request.app.state.metrics.actions.labels("csrf", "refused").inc()
        raise HTTPException(status_code=403, detail="invalid or missing CSRF token; reload the page")
