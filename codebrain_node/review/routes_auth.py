"""Sign-in and sign-out: the password form, the throttle in front of Argon2, a fresh session at every sign-in.

Every attempt is an audit event (``sign_in``, ``sign_in_failed``, ``sign_in_throttled``) with ``user:<name>``
as actor. A locked-out name or address is refused before the password is checked. A sign-in records a session
row (the cookie carries its token); sign-out revokes it, so a copy of the cookie is worth nothing afterwards.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from codebrain_node.db.lifecycle import audit
from codebrain_node.review import auth
from codebrain_node.review.dependencies import AppSettings, Database, Metrics, Throttle, check_csrf
from codebrain_node.review.pages import flash, page

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, settings: AppSettings, next: str = "/worklist") -> HTMLResponse:
    no_users = not any(user.password_hash for user in settings.review.users)
    return page(request, "login.html", next=safe_next(next), no_users=no_users)


@router.post("/login")
def login(
    request: Request,
    settings: AppSettings,
    factory: Database,
    metrics: Metrics,
    throttle: Throttle,
    username: str = Form(""),
    password: str = Form(""),
    csrf_token: str = Form(""),
    next: str = Form("/worklist"),
) -> Response:
    review = settings.review
    if not auth.csrf_matches(request.session.get("csrf"), csrf_token):
        metrics.actions.labels("sign_in", "csrf_refused").inc()
        return PlainTextResponse("invalid or missing CSRF token; reload the page", status_code=403)
    name = username.strip()
    peer = request.client.host if request.client else None
    client = auth.client_address(review, peer, request.headers.get("x-forwarded-for"))
    again = RedirectResponse(f"/login?{urlencode({'next': safe_next(next)})}", status_code=303)
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
    token = auth.open_session(factory, user, review.session_max_age_s)  # on record: sign-out can revoke it
    request.session.clear()  # a fresh session (and CSRF token) at every sign-in
    request.session["sid"] = token
    request.session["csrf"] = auth.new_csrf_token()
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request, factory: Database, csrf_token: str = Form("")) -> Response:
    check_csrf(request, csrf_token)
    auth.revoke_session(factory, request.session.get("sid"))  # every copy of the cookie is signed out too
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def safe_next(target: str) -> str:
    """Only same-site paths: ``/worklist`` yes, ``//evil.example`` and ``https://...`` no."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/worklist"
    return quote(target, safe="/?=&%:+,.-_~")
