"""The guard in front of every request (SPEC §7, issue 9 item 4).

ComfyUI's history is the list of what not to do: a localhost API any web page could
drive (CVE-2024-10481), then through ``Origin: null``, then through DNS rebinding. So,
in this order, before any route runs:

1. ``Host`` must name this server (the listen address, ``localhost``, ``127.0.0.1``,
   ``[::1]`` or a configured name), else 421: a rebound DNS name never reaches the API.
2. With a token, every request carries it: ``Authorization: Bearer TOKEN`` or the
   session cookie the login form sets (an HMAC of the token, so it dies with it), both
   compared in constant time. Without: 401 (the page redirects to the login form).
3. A state-changing request (anything but GET/HEAD) needs an ``Origin`` equal to its
   ``Host`` when it has one (``null`` and foreign origins are refused, 403) and the
   header ``X-Stylefold: 1``, which a cross-site form cannot send and a cross-site
   script cannot send without a CORS preflight, which is never granted.
4. A body above the upload cap is refused (413) while it arrives, before it is parsed.

Every response gets ``nosniff``, a strict Content-Security-Policy (scripts, styles,
images only from this origin; no inline script), no framing and no referrer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from .settings import WebSettings

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Guard", "SessionKeys", "same_origin"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "stylefold_session"
CSRF_COOKIE = "stylefold_csrf"
SESSION_DAYS = 30
LOGIN_PATH = "/login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on a form
    # POST (the login form), which the origin check rightly refuses.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SAFE_METHODS = frozenset({"GET", "HEAD"})
FORM_SLACK = 1 << 20  # multipart boundaries and the preset field, above the file's own cap


class SessionKeys:
    """Session cookies: ``EXPIRY.NONCE.MAC``, the MAC keyed by the token."""

    def __init__(self, token: str) -> None:
        self._key = hashlib.sha256(b"stylefold-session\x00" + token.encode()).digest()
        self._token = token.encode()

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def new_session(self, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SESSION_DAYS * 86400)
        body = f"{expiry}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(body)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        body, _, mac = value.rpartition(".")
        expiry = body.split(".", 1)[0]
        if not (body and expiry.isdigit() and hmac.compare_digest(mac.encode(), self._mac(body).encode())):
            return False
        return int(expiry) > (now or time.time())

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


def host_name(host: str) -> str:
    """``[::1]:8707`` -> ``::1``; ``Example.COM.:80`` -> ``example.com``."""
    value = host.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names the server the request was sent to (its Host)."""
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host.lower()


class Guard:
    """ASGI middleware enforcing the rules above; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings
        self.sessions = SessionKeys(settings.token) if settings.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # none served: refuse before any route sees it
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        send = _with_security_headers(send)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(send)
            return
        if scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        await self._limited(scope, receive, send, headers)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> Callable[[Send], Awaitable[None]] | None:
        host = headers.get("host", "")
        if host_name(host) not in self.settings.allowed_hosts:
            return _json(421, f"this server does not answer to the host name {host_name(host)[:100]!r}; "
                              "add it to [web] names")
        path, method = scope.get("path", ""), scope["method"]
        if self.sessions is not None and path != LOGIN_PATH and not self._authorised(headers):
            if method in SAFE_METHODS and path == "/":  # the page itself: to the login form
                return _redirect(LOGIN_PATH)
            return _json(401, "this server needs its token: Authorization: Bearer TOKEN, or log in at /login",
                         [(b"www-authenticate", b'Bearer realm="stylefold"')])
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not same_origin(origin, host):
                return _json(403, f"cross-origin request refused (Origin {origin[:100]!r})")
            if headers.get("sec-fetch-site") == "cross-site":
                return _json(403, "cross-site request refused")
            if path != LOGIN_PATH and headers.get("x-stylefold") != "1":
                return _json(403, "a request that changes anything needs the header X-Stylefold: 1")
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.sessions is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given and self.sessions.token_ok(given.strip()):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(SESSION_COOKIE)
        return bool(cookie) and self.sessions.session_ok(cookie or "")

    async def _limited(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        cap = self.settings.max_upload_bytes + FORM_SLACK
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await _too_large(self.settings)(send)
            return
        seen, over = [0], [False]

        async def counted() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > cap:
                over[0] = True
                return {"type": "http.disconnect"}
            return message

        started = [False]

        async def send_unless_over(message: Message) -> None:
            if over[0]:
                if message["type"] == "http.response.start" and not started[0]:
                    started[0] = True
                    await _too_large(self.settings)(send)
                return
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, send_unless_over)
        except Exception:
            if not over[0]:
                raise
        if over[0] and not started[0]:
            await _too_large(self.settings)(send)


def _too_large(settings: WebSettings) -> Callable[[Send], Awaitable[None]]:
    return _json(413, f"the upload is larger than the cap of {settings.max_upload_bytes // (1024 * 1024)} MB "
                      "([web] max_upload_mb)")


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            if b"cache-control" not in present:
                extra.append((b"cache-control", b"no-store"))
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return wrapped


def _json(status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
          ) -> Callable[[Send], Awaitable[None]]:
    body = json.dumps({"detail": detail}).encode()

    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    return respond


def _redirect(location: str) -> Callable[[Send], Awaitable[None]]:
    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    return respond


def _cookies(header: str) -> dict[str, str]:
    found = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name and name not in found:
            found[name] = value
    return found
