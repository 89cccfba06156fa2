"""What every HTTP request passes before Gradio sees it (an ASGI middleware):

* **Other origins.** A state-changing request (any method but GET, HEAD, OPTIONS) sent by a page of
  another origin is refused, even one on another localhost port riding on a logged-in browser's
  cookies: the browser says so in ``Origin`` (and ``Sec-Fetch-Site``). Scripts send neither and
  are let through (they must log in). Behind a reverse proxy that changes the host, list the public
  origin in ``$REWARDLAB_ALLOWED_ORIGINS``.
* **Login throttle.** ``POST /login`` is checked against ``core.accounts.LoginThrottle`` before the
  password is: a throttled attempt gets HTTP 429 with ``Retry-After`` and costs no hash. Clients are
  bucketed by address (an IPv6 client by its /64, which one host controls whole); the attempts of one
  bucket run one after another (so a correct login in flight is never counted as a failure), and at most
  ``MAX_CONCURRENT_PASSWORD_CHECKS`` password checks run at once, whoever asks: past a short wait a login
  gets HTTP 503 with ``Retry-After``, so a flood from fresh addresses and names cannot take every core.
* **Sessions in the store.** Gradio's login tokens live in the store (``core.sessions``), under a cookie
  name derived from the store: a restart logs nobody out, and a password reset ends that user's sessions.
  ``/logout`` is a POST (a GET from an ``<img>`` on another site is refused), checked like any other.
* **Events belong to their user.** The ``event_id`` a call returns is recorded with its user; a request
  naming an event (``/call/NAME/{event_id}``, ``/stream/{event_id}``, ``/cancel``) by anyone else is
  refused. ``GUARDED_ROUTES`` lists every Gradio route whose path names an event or a session; a test
  enumerates Gradio's routes and fails on one the guard does not know.
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

import asyncio
import ipaddress
import re

from core.accounts import LoginThrottle
from core.limits import (
    MAX_CONCURRENT_PASSWORD_CHECKS,
    MAX_EVENT_BODY_BYTES,
    MAX_LOGIN_BODY_BYTES,
    MAX_PASSWORD_CHECK_WAIT_SECONDS,
    MAX_SESSIONS_REMEMBERED,
)
from core.sessions import log_out_everywhere, may_fetch_files

ALLOWED_ORIGINS_ENV = "REWARDLAB_ALLOWED_ORIGINS"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every Gradio route whose path names an event or a session (after the /gradio_api prefix): the guard
# checks the owner of each. tests/test_http_guard.py enumerates Gradio's routes and fails on a new one.
GUARDED_ROUTES = (
    "/call/{api_name}/{event_id}",
    "/call/v2/{api_name}/{event_id}",
    "/stream/{event_id}",
    "/stream/{event_id}/close",
    "/stream/{session_hash}/{run}/{component_id}/playlist.m3u8",
    "/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}",
    "/stream/{session_hash}/{run}/{component_id}/playlist-file",
    "/heartbeat/{session_hash}",
)
# Calls whose answer is {"event_id": ...}: the guard records who started the event.
EVENT_STARTING_ROUTES = ("/call/{api_name}", "/call/v2/{api_name}", "/queue/join")


def _route_pattern(template: str) -> re.Pattern:
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+?)", re.escape(template))
    return re.compile(pattern + "/?$")


_GUARDED = [_route_pattern(t) for t in GUARDED_ROUTES]
_FILE_ROUTE = re.compile(r"/file[=/]")  # Gradio's /file={path} and /file/{path}
_CALL_ROUTE = re.compile(r"/(?:call|call/v2|run|api)/(?P<api_name>[^/]+?)/?$")  # a script's call by api name
_EVENT_STARTING = [_route_pattern(t) for t in EVENT_STARTING_ROUTES]


def client_bucket(address: str) -> str:
    """The key a client's login attempts count under: its IPv4 address, or its IPv6 /64 (a host holds
    a whole /64, so per-address counting would give it 2**64 fresh addresses)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(getattr(parsed, "ipv4_mapped", None) or parsed)

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


def _login_token(scope: Scope, cookie_id: str) -> str | None:
    """Gradio's login token from the request's cookies (either of the two it sets), read exactly as Starlette
    (and so Gradio) reads them."""
    jar = cookie_parser(_header(scope, b"cookie") or "")
    return jar.get(f"access-token-{cookie_id}") or jar.get(f"access-token-unsecure-{cookie_id}")


class RequestGuard:
    def __init__(self, app: Callable, *, store: Any = None, throttle: LoginThrottle | None = None,
                 allowed_origins: tuple[str, ...] | None = None) -> None:
        self.app = app
        self.store = store  # storage.engine.Store: sessions live there (None: Gradio's in-memory tokens)
        self.throttle = throttle or LoginThrottle()
        configured = os.environ.get(ALLOWED_ORIGINS_ENV, "")
        self.allowed_origins = set(allowed_origins or ()) | {o.strip().rstrip("/") for o in configured.split(",") if o.strip()}
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._event_owners: OrderedDict[str, str] = OrderedDict()
        self._password_checks = asyncio.Semaphore(MAX_CONCURRENT_PASSWORD_CHECKS)
        self._bucket_turns: OrderedDict[str, asyncio.Lock] = OrderedDict()

    def _use_stored_sessions(self, scope: Scope) -> None:
        """Gradio's app keeps login tokens in a dict and names its cookie with a random id per start; both
        move to the store, so sessions outlive a restart (Gradio resets ``tokens`` at launch, so this runs
        on the first request)."""
        app = scope.get("app")
        if self.store is None or app is None or getattr(app, "_rewardlab_sessions", False):
            return
        from app.session_tokens import StoredTokens, cookie_id_for

        app.tokens = StoredTokens(self.store)
        app.cookie_id = cookie_id_for(self.store)
        app._rewardlab_sessions = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self._use_stored_sessions(scope)
        method, path = scope["method"], scope["path"].rstrip("/")
        if method not in SAFE_METHODS and not self._same_origin(scope):
            return await _respond(send, 403, f"refused {method} {path}: it came from a page of another origin "
                                             f"({_header(scope, b'origin')})")
        if method == "POST" and path.endswith("/login"):
            return await self._login(scope, receive, send)
        if path.endswith("/logout"):
            if method != "POST":
                return await _respond(send, 405, "log out with POST (the page's Log out button does); a GET is "
                                                 "refused so that a link or image elsewhere cannot log you out",
                                      [(b"allow", b"POST")])
            return await self._logout(scope, send)
        # Every session hash the request names, read the way Gradio will read it or more: each value of
        # a repeated query parameter, the heartbeat path, and a JSON body whatever its content type says
        # (FastAPI parses "APPLICATION/JSON" and "application/x+json" alike). Bodies other than file
        # uploads are capped here; uploads have Gradio's max_file_size.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        named = list(query.get("session_hash", []))
        events = list(query.get("event_id", []))
        for pattern in _GUARDED:
            found = pattern.search(path)
            if found:
                named += [found.group("session_hash")] if "session_hash" in pattern.groupindex else []
                events += [found.group("event_id")] if "event_id" in pattern.groupindex else []
                break
        if method not in SAFE_METHODS and not _media_type(scope).startswith("multipart/"):
            try:
                body = await _read_body(receive, MAX_EVENT_BODY_BYTES)
            except _TooLarge:
                return await _respond(send, 413, f"the request is larger than {MAX_EVENT_BODY_BYTES // 2**20} MiB")
            raw_receive, receive = receive, _replay(body, receive)
            try:
                parsed = json.loads(body) if body else None
            except ValueError:  # not JSON: FastAPI will refuse it as a JSON body too
                parsed = None
            if isinstance(parsed, dict) and parsed.get("session_hash") is not None:
                named.append(str(parsed["session_hash"]))
            if isinstance(parsed, dict) and parsed.get("event_id") is not None:
                events.append(str(parsed["event_id"]))
            called = _CALL_ROUTE.search(path)
            if called and isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
                from app.api import complete_api_arguments

                try:
                    completed = complete_api_arguments(called.group("api_name"), parsed["data"])
                except ValueError as error:
                    return await _respond(send, 400, str(error))
                if len(completed) != len(parsed["data"]):
                    body = json.dumps({**parsed, "data": completed}).encode()
                    scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                             + [(b"content-length", str(len(body)).encode())]}
                    receive = _replay(body, raw_receive)
        if len(set(named)) > 1 or len(set(events)) > 1:
            return await _respond(send, 400, f"refused {method} {path}: it names more than one session or event")
        user = self._user(scope)
        if self.store is not None and _FILE_ROUTE.search(path) and not self._may_download(user):
            return await _respond(send, 403, f"refused {method} {path}: files (exports) are served to those who "
                                             "may export; ask an engineer")
        if named and named[0]:
            if not self._claim_session(named[0], user):
                return await _respond(send, 403, f"refused {method} {path}: this session belongs to another user")
        if events and events[0]:
            owner = self._event_owners.get(events[0])
            if owner is None:
                return await _respond(send, 404, f"refused {method} {path}: no such event (events last while their "
                                                 "app runs)")
            if owner != user:
                return await _respond(send, 403, f"refused {method} {path}: this event belongs to another user")
        if method == "POST" and any(pattern.search(path) for pattern in _EVENT_STARTING):
            return await self.app(scope, receive, self._recording_events(send, user))
        return await self.app(scope, receive, send)

    def _recording_events(self, send: Send, user: str) -> Send:
        """``send`` that records the user of the ``event_id`` in a call's JSON answer (a few dozen bytes)."""
        chunks: list[bytes] = []

        async def recording(message: dict) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        answer = json.loads(b"".join(chunks)) if sum(map(len, chunks)) < 4096 else None
                    except ValueError:
                        answer = None
                    if isinstance(answer, dict) and isinstance(answer.get("event_id"), str):
                        self._event_owners[answer["event_id"]] = user
                        while len(self._event_owners) > MAX_SESSIONS_REMEMBERED:
                            self._event_owners.popitem(last=False)
            await send(message)

        return recording

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
        token = _login_token(scope, cookie_id)
        return tokens.get(token, "") if token else ""

    def _may_download(self, user: str) -> bool:
        """Gradio serves every file in its cache to any logged-in user who has the URL; the files the app
        puts there are exports (and uploads to import), so only roles that may export get them."""
        return may_fetch_files(self.store, user)

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
        address = client_bucket((scope.get("client") or ("unknown", 0))[0])
        busy = [(b"retry-after", str(MAX_PASSWORD_CHECK_WAIT_SECONDS).encode())]
        turn = self._bucket_turns.setdefault(address, asyncio.Lock())
        self._bucket_turns.move_to_end(address)
        while len(self._bucket_turns) > MAX_SESSIONS_REMEMBERED:
            self._bucket_turns.popitem(last=False)
        try:
            # One attempt of a bucket at a time: its outcome is known before the next is judged.
            await asyncio.wait_for(turn.acquire(), MAX_PASSWORD_CHECK_WAIT_SECONDS)
        except TimeoutError:
            return await _respond(send, 503, "too many logins from your network at once: try again in a few seconds", busy)
        try:
            wait = self.throttle.begin_attempt(address, user)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                return await _respond(send, 429, f"too many failed logins: try again in {seconds} s",
                                      [(b"retry-after", str(seconds).encode())])
            try:
                await asyncio.wait_for(self._password_checks.acquire(), MAX_PASSWORD_CHECK_WAIT_SECONDS)
            except TimeoutError:
                self.throttle.succeeded(address, user)  # not checked: not a failure
                return await _respond(send, 503, "too many logins at once: try again in a few seconds", busy)
            status = {}

            async def watch(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await self.app(scope, _replay(body, receive), watch)
            finally:
                self._password_checks.release()
            if status.get("code") == 200:
                self.throttle.succeeded(address, user)  # the attempt was counted as failed until now
        finally:
            turn.release()

    # ----- logout
    async def _logout(self, scope: Scope, send: Send) -> None:
        """End every session of the user (as Gradio's /logout does), clear the cookies, back to the page."""
        app = scope.get("app")
        cookie_id = getattr(app, "cookie_id", "")
        token = _login_token(scope, cookie_id)
        if self.store is not None:
            log_out_everywhere(self.store, token)
        elif token and isinstance(getattr(app, "tokens", None), dict):
            app.tokens.pop(token, None)
        expired = [(b"set-cookie", f"{name}=; Max-Age=0; Path=/; HttpOnly".encode())
                   for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}")]
        root = (scope.get("root_path") or "") + "/"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", root.encode()), (b"content-length", b"0"), *expired]})
        await send({"type": "http.response.body", "body": b""})
