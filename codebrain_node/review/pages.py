"""Server-rendered pages: the Jinja2 environment, and one way to render a page with its user, CSRF token and flashes.

A flash is a message kept in the session for the next page shown (after a POST redirects), so a refused
sign-in or an approved study is reported once on the page the browser lands on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from codebrain_node import __version__
from codebrain_node.db.models import as_utc
from codebrain_node.review.dependencies import csrf_token
from codebrain_node.review.worklist import STATUS_LABELS, format_age

TEMPLATES = Path(__file__).resolve().parent / "templates"


def make_templates() -> Jinja2Templates:
    """The templates with the globals and filters every page uses (status labels, version, ages, UTC times)."""
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals.update(status_labels=STATUS_LABELS, version=__version__, format_age=format_age)
    templates.env.filters["age"] = format_age
    templates.env.filters["when"] = lambda moment: as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""
    return templates


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Template ``name`` with ``context`` plus the user, a CSRF token and the pending flashes; never cached."""
    context.update(
        user=getattr(request.state, "user", None),
        csrf_token=csrf_token(request),
        flashes=request.session.pop("flash", []),
    )
    templates: Jinja2Templates = request.app.state.templates
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


def flash(request: Request, kind: str, message: str) -> None:
    """Keep ``message`` (``ok`` or ``error``) for the next page this session is shown."""
    request.session["flash"] = [*request.session.get("flash", []), {"kind": kind, "message": message}]
