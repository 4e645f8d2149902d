"""The ASGI application: the page, its assets, the login form and the API, behind the
``Guard``. FastAPI, for the OpenAPI schema it derives from the routes' types (served at
``/api/openapi.json``; its Swagger page is off, as it loads scripts from a CDN).
"""

from __future__ import annotations

import html
import secrets
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .. import __version__
from ..config import Config
from .api import build_router
from .context import Context
from .security import CSRF_COOKIE, SESSION_COOKIE, SESSION_DAYS, Guard, SessionKeys
from .settings import WebSettings

__all__ = ["create_app"]

# The only files served from the package: a fixed list, each with its type (never SVG).
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
LOGIN_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stylefold: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><h1>stylefold</h1><p>{message}</p>
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{csrf}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<button type="submit">Log in</button></form></body></html>
"""


def _asset(name: str) -> bytes:
    return (resources.files("stylefold.web") / "static" / name).read_bytes()


def create_app(config: Config, settings: WebSettings) -> Any:
    """The page and API for ``config``'s root, wrapped in the security guard."""
    ctx = Context(config, settings)
    app = FastAPI(title="stylefold", version=__version__, openapi_url="/api/openapi.json", docs_url=None,
                  redoc_url=None, description="The status page's API: the hot folder's jobs, uploads and files.")
    app.state.ctx = ctx
    app.include_router(build_router(ctx))
    page = _asset("index.html")
    assets = {name: _asset(name) for name in ASSETS}

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(assets[name], media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    _login_routes(app, settings)
    return Guard(app, settings)


def _login_routes(app: FastAPI, settings: WebSettings) -> None:
    sessions = SessionKeys(settings.token) if settings.token else None

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request) -> Response:
        if sessions is None:
            return RedirectResponse("/", status_code=303)
        return _form(request, "This status page needs its token ([web] token or STYLEFOLD_WEB_TOKEN).", 200)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form(max_length=1024)] = "",
              csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        if sessions is None:
            return RedirectResponse("/", status_code=303)
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(csrf.encode(), expected.encode()):
            return _form(request, "The form expired; log in again.", 403)
        if not sessions.token_ok(token):
            return _form(request, "Wrong token.", 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, sessions.new_session(), max_age=SESSION_DAYS * 86400, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        response.delete_cookie(CSRF_COOKIE, path="/login")
        return response


def _form(request: Request, message: str, status: int) -> Response:
    # The one already given, if any: a second tab (or a stray request) must not make the
    # first tab's form stale.
    given = request.cookies.get(CSRF_COOKIE, "")
    plain = len(given) == 32 and given.replace("-", "").replace("_", "").isalnum()
    csrf = given if plain else secrets.token_urlsafe(24)
    response = HTMLResponse(LOGIN_FORM.format(message=html.escape(message), csrf=csrf), status_code=status)
    response.set_cookie(CSRF_COOKIE, csrf, max_age=3600, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response
