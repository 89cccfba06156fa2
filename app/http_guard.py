"""What every HTTP request passes before Gradio sees it (an ASGI middleware):

* **Other origins.** A state-changing request (any method but GET, HEAD, OPTIONS) sent by a page of
  another origin is refused, even one on another localhost port riding on a logged-in browser's
  cookies: the browser says so in ``Origin`` (and ``Sec-Fetch-Site``). Scripts send neither and
  are let through (they must log in). Behind a reverse proxy that changes the host, list the public
  origin in ``$REWARDLAB_ALLOWED_ORIGINS``.
* **Login throttle.** ``POST /login`` is checked against ``core.accounts.LoginThrottle`` before the
  password is: a throttled attempt gets HTTP 429 with ``Retry-After`` and costs no hash.
* **Sessions belong to their user.** Gradio keys event results and per-session state by a
  ``session_hash`` the client chooses; the first user to use one owns it, and a request of another
  user naming it is refused, so knowing someone's session hash reads nothing of theirs.
* **Size.** A JSON request body (an event's inputs) is capped at ``MAX_EVENT_BODY_BYTES``.

Gradio builds its FastAPI app itself; the middleware goes in through ``launch(app_kwargs=...)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request, cookie_parser

from core.limits import MAX_EVENT_BODY_BYTES, MAX_LOGIN_BODY_BYTES, MAX_SESSIONS_REMEMBERED
from core.accounts import LoginThrottle

ALLOWED_ORIGINS_ENV = "REWARDLAB_ALLOWED_ORIGINS"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

log = logging.getLogger("rewardlab.http")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _respond(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    log.warning("HTTP %s: %s", status, detail)
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _media_type(scope: Scope) -> str:
    return (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestGuard:
    def __init__(self, app: Callable, *, throttle: LoginThrottle | None = None,
                 allowed_origins: tuple[str, ...] | None = None) -> None:
        self.app = app
        self.throttle = throttle or LoginThrottle()
        configured = os.environ.get(ALLOWED_ORIGINS_ENV, "")
        self.allowed_origins = set(allowed_origins or ()) | {o.strip().rstrip("/") for o in configured.split(",") if o.strip()}
        self._owners: OrderedDict[str, str] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"].rstrip("/")
        if method not in SAFE_METHODS and not self._same_origin(scope):
            return await _respond(send, 403, f"refused {method} {path}: it came from a page of another origin "
                                             f"({_header(scope, b'origin')})")
        if method == "POST" and path.endswith("/login"):
            return await self._login(scope, receive, send)
        # Every session hash the request names, read the way Gradio will read it or more: each value of
        # a repeated query parameter, the heartbeat path, and a JSON body whatever its content type says
        # (FastAPI parses "APPLICATION/JSON" and "application/x+json" alike). Bodies other than file
        # uploads are capped here; uploads have Gradio's max_file_size.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        named = list(query.get("session_hash", []))
        if "/heartbeat/" in path:
            named.append(path.rsplit("/", 1)[-1])
        if method not in SAFE_METHODS and not _media_type(scope).startswith("multipart/"):
            try:
                body = await _read_body(receive, MAX_EVENT_BODY_BYTES)
            except _TooLarge:
                return await _respond(send, 413, f"the request is larger than {MAX_EVENT_BODY_BYTES // 2**20} MiB")
            receive = _replay(body, receive)
            try:
                parsed = json.loads(body) if body else None
            except ValueError:  # not JSON: FastAPI will refuse it as a JSON body too
                parsed = None
            if isinstance(parsed, dict) and parsed.get("session_hash") is not None:
                named.append(str(parsed["session_hash"]))
        if len(set(named)) > 1:
            return await _respond(send, 400, f"refused {method} {path}: it names more than one session")
        if named and named[0]:
            if not self._claim_session(named[0], self._user(scope)):
                return await _respond(send, 403, f"refused {method} {path}: this session belongs to another user")
        return await self.app(scope, receive, send)

    # ----- origins
    def _same_origin(self, scope: Scope) -> bool:
        site = _header(scope, b"sec-fetch-site")
        origin = _header(scope, b"origin")
        if origin is None or origin == "null":
            # No Origin: not a browser's cross-origin request (scripts, curl); a browser's "null"
            # origin (sandboxed frame, file://) is never the app's own.
            return origin is None and site in (None, "same-origin", "none")
        if origin.rstrip("/") in self.allowed_origins:
            return True
        host = _header(scope, b"host")
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower() and site in (None, "same-origin", "none")

    # ----- sessions
    def _user(self, scope: Scope) -> str:
        app = scope.get("app")
        tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
        if not tokens or cookie_id is None:
            return ""
        jar = cookie_parser(_header(scope, b"cookie") or "")  # exactly as Starlette (and so Gradio) reads them
        token = jar.get(f"access-token-{cookie_id}") or jar.get(f"access-token-unsecure-{cookie_id}")
        return tokens.get(token, "") if token else ""

    def _claim_session(self, session_hash: str, user: str) -> bool:
        owner = self._owners.get(session_hash)
        if owner is None:
            self._owners[session_hash] = user
            while len(self._owners) > MAX_SESSIONS_REMEMBERED:
                self._owners.popitem(last=False)
            return True
        self._owners.move_to_end(session_hash)
        return owner == user

    # ----- login
    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(receive, MAX_LOGIN_BODY_BYTES)
        except _TooLarge:
            return await _respond(send, 413, "the login form is too large")
        # Parsed by Starlette, as FastAPI parses it for Gradio (urlencoded, or multipart from the page),
        # so the throttle counts the very name the password is checked for.
        try:
            form = await Request(scope, _replay(body, receive)).form()
            names, passwords = form.getlist("username"), form.getlist("password")
        except Exception:  # noqa: BLE001 (a malformed form is refused like a missing field)
            names, passwords = [], []
        if len(names) != 1 or len(passwords) != 1 or not isinstance(names[0], str):
            return await _respond(send, 400, "give one username and one password")
        user = names[0].strip()
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.throttle.begin_attempt(address, user)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return await _respond(send, 429, f"too many failed logins: try again in {seconds} s",
                                  [(b"retry-after", str(seconds).encode())])
        status = {}

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, _replay(body, receive), watch)
        if status.get("code") == 200:
            self.throttle.succeeded(address, user)  # the attempt was counted as failed until now
