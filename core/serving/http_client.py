"""A small JSON-over-HTTP client for reward servers (the remote reward function, the parity check,
the load test), on the standard library: a trainer process needs no extra package to call one.

Errors come back as ``RemoteError`` with the server's own message (``{"error": ...}`` from this
app, ``{"detail": ...}`` from FastAPI, ``{"message": ...}`` from vLLM), so a refused request says
why in the trainer's log.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from core.loopback import is_loopback

# Statuses worth retrying: the server is busy (503), restarting or behind a proxy that is (502, 504).
RETRY_STATUSES = (502, 503, 504)


class RemoteError(RuntimeError):
    """A request the server refused or could not answer; ``status`` is 0 when it was not reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DEFAULT = urllib.request.build_opener()


def _opener(url: str) -> urllib.request.OpenerDirector:
    """A server on this machine is called directly, whatever proxy ``$http_proxy`` names (a reward
    server beside the trainer must not be routed through a corporate proxy); others as configured."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return _DIRECT if is_loopback(host) else _DEFAULT


def _headers(api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {**headers, **(extra or {})}


def _server_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace")
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            value = body.get(key)
            if isinstance(value, dict) and "message" in value:  # OpenAI-style {"error": {"message": ...}}
                value = value["message"]
            if value:
                return str(value)[:1000]
    return json.dumps(body)[:300]


def request_json(method: str, url: str, body: Any = None, *, api_key: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 120.0, retries: int = 0) -> Any:
    """The JSON answer of ``method url`` (with ``body`` as JSON). Raises ``RemoteError`` for an HTTP
    error (at once for 4xx; after ``retries`` tries with backoff for 502/503/504 and unreachable servers)."""
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, method=method, headers=_headers(api_key, headers))
        try:
            with _opener(url).open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            failure = RemoteError(error.code, f"{method} {url}: HTTP {error.code}: {_server_message(error.read())}")
            if error.code not in RETRY_STATUSES:
                raise failure from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            failure = RemoteError(0, f"{method} {url}: cannot reach the server ({reason})")
        except ValueError as error:
            raise RemoteError(200, f"{method} {url}: the answer is not JSON ({error})") from None
        if attempt < retries:
            time.sleep(min(8.0, 0.5 * 2**attempt))
    raise failure


def post_json(url: str, body: Any, **options: Any) -> Any:
    return request_json("POST", url, body, **options)


def get_json(url: str, **options: Any) -> Any:
    return request_json("GET", url, **options)


def wait_until_serving(url: str, *, timeout: float = 300.0, still_starting: Callable[[], bool] = lambda: True) -> bool:
    """Poll a reward server's ``/health`` until it serves (its parity check passed): True; False as
    soon as ``still_starting()`` turns false (its process exited, say) or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and still_starting():
        try:
            if get_json(url.rstrip("/") + "/health", timeout=5).get("status") == "serving":
                return True
        except RemoteError:
            pass
        time.sleep(0.3)
    return False
