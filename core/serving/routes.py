"""The reward server's HTTP face: routes for the APIs RL trainers speak, the API key, the size caps.

* ``POST /score`` (RewardLab, and ``make_remote_reward_fn`` for TRL): rewards; thinking and answer
  rewards with ``segments``; per-token trajectories with ``trajectory``.
* ``POST /get_reward`` (OpenRLHF ``--remote_rm_url``): ``{"rewards", "scores", "extra_logs"}``.
* ``POST /classify`` (vLLM's pooling API, which verl's reward loop calls): ``{"data": [{"probs": [r]}]}``.
* ``GET /health`` (no key needed: 200 once serving, 503 while the parity check runs or after it failed)
  and ``GET /info`` (models, versions, training config, max_length, caps, the parity report).

Access (``authorize``): with an API key, every route but ``/health`` needs ``Authorization: Bearer
KEY`` (401 otherwise); ``ServerConfig`` refuses a non-loopback address without one. Until the
start-up parity check has passed, scoring routes answer 503 to everyone but the check itself.
Bodies are counted while they stream in and refused past ``MAX_SERVE_BODY_BYTES`` (413).
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.limits import (
    MAX_SERVE_BODY_BYTES,
    MAX_SERVE_BODY_SECONDS,
    MAX_SERVE_IDLE_SECONDS,
    MAX_SERVE_IN_FLIGHT,
    MAX_SERVE_PREPARING,
)
from core.serving.batching import ServerBusy
from core.serving.reward_service import CompletionScore, ModelFailure, RewardService
from core.serving.request_bodies import (
    BadRequest,
    parse_classify_request,
    parse_get_reward_request,
    parse_json_body,
    parse_score_request,
)

log = logging.getLogger(__name__)
PARITY_HEADER = "X-RewardLab-Parity"
SCORING_APIS = ("/score", "/get_reward", "/classify", "/pooling")


@dataclass
class ServerState:
    """Whether the server serves yet: ``checking`` (the start-up parity check runs), ``serving``, ``failed``."""

    phase: str = "checking"
    parity_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    parity: dict[str, Any] | None = None  # the start-up report, as /info shows it


def authorize(authorization: str | None, api_key: str) -> None:
    """Let a request through when the server has no API key, or when it carries ``Bearer KEY``
    (compared in constant time). Raises ``BadRequest`` 401."""
    if not api_key:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise BadRequest("this server needs an API key: send the header 'Authorization: Bearer <key>' "
                         "(the key is in the server's --api-key-env variable)", status=401,
                         headers={"WWW-Authenticate": "Bearer"})


def admit(request: Request, api_key: str, state: ServerState) -> None:
    """The key first (nothing about the server is told to a caller without it), then the start-up gate."""
    authorize(request.headers.get("authorization"), api_key)
    if state.phase == "serving":
        return
    if state.phase == "checking" and hmac.compare_digest(request.headers.get(PARITY_HEADER, ""), state.parity_token):
        return
    why = "the start-up parity check is running" if state.phase == "checking" else \
        "the start-up parity check failed, so this server refuses to score (see its log)"
    raise BadRequest(f"not serving: {why}", status=503, headers={"Retry-After": "2"})


async def read_body(request: Request, cap: int = MAX_SERVE_BODY_BYTES) -> bytes:
    """The body, counted while it streams in. Raises ``BadRequest`` 413 past ``cap`` bytes, whatever
    Content-Length claimed. The rest of an oversized body, up to as much again, is read and dropped
    (a chunk at a time) before the answer, so that an ordinary client, still sending, reads the 413
    instead of a broken connection; past that the connection is closed on it."""
    too_big = BadRequest(f"the body is over {cap:,} bytes ($REWARDLAB_MAX_SERVE_BODY_MB); split the request", status=413)
    declared = request.headers.get("content-length", "")
    chunks, size = [], 0
    deadline = anyio.current_time() + MAX_SERVE_BODY_SECONDS
    if declared.isdigit() and int(declared) > 2 * cap:
        raise too_big
    stream = request.stream().__aiter__()
    while True:
        # A body that trickles in holds a connection and a slot of the server's concurrency: it gets a
        # deadline for the whole body, not only for each chunk.
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise BadRequest(f"the body took longer than {MAX_SERVE_BODY_SECONDS} s to arrive", status=408) from None
        size += len(chunk)
        if size > 2 * cap:
            break
        if size <= cap:
            chunks.append(chunk)
    if size > cap:
        raise too_big
    return b"".join(chunks)


def build_app(service: RewardService, *, api_key: str, state: ServerState,
              info: Callable[[], dict[str, Any]]) -> FastAPI:
    """The ASGI app serving ``service``; ``info`` gives ``/info``'s body."""
    app = FastAPI(title="RewardLab reward server", docs_url=None, redoc_url=None, openapi_url=None)
    preparing = anyio.CapacityLimiter(MAX_SERVE_PREPARING)
    in_flight = [0]  # scoring requests between admission and answer (one event loop: no lock needed)

    async def scores_of(request: Request, parse: Callable[[dict[str, Any]], Any], prepare: Callable[[Any], Any]
                        ) -> tuple[Any, list[CompletionScore]]:
        admit(request, api_key, state)
        # Scoring requests in flight (reading their body, formatting, waiting for the batcher) are counted
        # here rather than by uvicorn, which counts idle connections too (1,000 idle sockets made /health 503).
        if in_flight[0] >= MAX_SERVE_IN_FLIGHT:
            raise BadRequest(f"the server is busy: {MAX_SERVE_IN_FLIGHT} requests are in flight; retry shortly",
                             status=503, headers={"Retry-After": "1"})
        in_flight[0] += 1
        try:
            return await _scores_of(request, parse, prepare)
        finally:
            in_flight[0] -= 1

    async def _scores_of(request: Request, parse: Callable[[dict[str, Any]], Any], prepare: Callable[[Any], Any]
                         ) -> tuple[Any, list[CompletionScore]]:
        parsed = parse(parse_json_body(await read_body(request)))
        # Formatting and tokenizing hold a request's texts and encodings in memory: a few at once, the rest wait
        # (their bodies are capped and the queue behind is bounded).
        prepared = await anyio.to_thread.run_sync(prepare, parsed, limiter=preparing)
        return parsed, await service.score(prepared)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        def prepare(parsed):  # noqa: ANN001, ANN202
            return service.prepare_completions(parsed.prompts, parsed.completions, segments=parsed.segments,
                                               trajectory=parsed.trajectory, steps=parsed.steps)

        parsed, results = await scores_of(request, parse_score_request, prepare)
        body: dict[str, Any] = {
            "model": service.name,
            "rewards": [r.reward for r in results],
            "over_max_length": [r.over_max_length for r in results],
            "n_tokens": [r.n_tokens for r in results],
        }
        if parsed.segments:
            body["thinking_rewards"] = [r.thinking_reward for r in results]
            body["answer_rewards"] = [r.answer_reward for r in results]
        if parsed.trajectory:
            body["trajectories"] = [None if r.trajectory is None else [[t, v] for t, v in r.trajectory] for r in results]
        if service.spread_kind is not None:
            body["reward_spread"] = [r.spread for r in results]
        if parsed.steps is not None:
            # raw rewards on each step's prefix (not normalized: a process reward model's logit), and their sigmoid
            body["steps"] = [r.steps for r in results]
            body["step_rewards"] = [r.step_rewards for r in results]
            body["step_scores"] = [None if r.step_rewards is None else [1 / (1 + math.exp(-v)) for v in r.step_rewards]
                                   for r in results]
        return JSONResponse(body)

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        _, results = await scores_of(request, parse_get_reward_request, service.prepare_queries)
        rewards = [r.reward for r in results]
        # OpenRLHF logs each extra_logs key per sample as a number (so an unscored sample's spread is 0.0; its
        # over_max_length is 1.0).
        extra_logs = {"over_max_length": [float(r.over_max_length) for r in results]}
        if service.spread_kind is not None:
            extra_logs["reward_spread"] = [r.spread if r.spread is not None else 0.0 for r in results]
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": extra_logs})

    @app.post("/pooling")
    async def pooling(request: Request) -> JSONResponse:
        """vLLM's pooling API for token classification (``task: token_classify``): a score per token, which PRM
        clients read at their step separators."""
        def parse(body: dict[str, Any]):  # noqa: ANN202
            if body.get("task", "token_classify") != "token_classify":
                raise BadRequest(f"task: this server answers token_classify (a score per token), got {body.get('task')!r};"
                                 " use /classify or /score for one reward per input")
            return parse_classify_request({key: value for key, value in body.items() if key != "task"})

        parsed, results = await scores_of(request, parse, service.prepare_token_scores)
        tokens = sum(r.n_tokens or 0 for r in results)
        data = [{"index": i, "object": "pooling",
                 "data": None if r.step_rewards is None else [[_activated(v, parsed.activation)] for v in r.step_rewards],
                 "over_max_length": r.over_max_length} for i, r in enumerate(results)]
        return JSONResponse({"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                             "model": service.name, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                       "prompt_tokens_details": None}})

    @app.post("/classify")
    async def classify(request: Request) -> JSONResponse:
        def parse(body: dict[str, Any]):  # noqa: ANN202
            parsed = parse_classify_request(body)
            references = {service.name, *(model.reference for model in service.models)}
            if parsed.model is not None and parsed.model not in references:
                raise BadRequest(f"model: the model `{parsed.model}` does not exist here; this server serves "
                                 f"`{service.name}`", status=404)
            return parsed

        parsed, results = await scores_of(request, parse, service.prepare_classify)
        label = service.models[0].scorer.hf_model.config.id2label.get(0, "LABEL_0")
        tokens = sum(r.n_tokens or 0 for r in results)
        data = [{"index": i, "label": label, "probs": [_activated(r.reward, parsed.activation)], "num_classes": 1,
                 "over_max_length": r.over_max_length} for i, r in enumerate(results)]
        return JSONResponse({"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                             "model": service.name, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                       "prompt_tokens_details": None}})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": state.phase}, status_code=200 if state.phase == "serving" else 503)

    @app.get("/info")
    async def server_info(request: Request) -> JSONResponse:
        authorize(request.headers.get("authorization"), api_key)
        return JSONResponse({**info(), "status": state.phase, "parity": state.parity})

    @app.exception_handler(BadRequest)
    async def refused(_: Request, error: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

    @app.exception_handler(ServerBusy)
    async def busy(_: Request, error: ServerBusy) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ModelFailure)
    async def broken(_: Request, error: ModelFailure) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=500)

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        log.error("scoring failed: %r", error, exc_info=error)
        return JSONResponse({"error": "the server failed to score this request (its log has the details)"},
                            status_code=500)

    return app


def _activated(reward: float | None, activation: bool) -> float | None:
    """vLLM's classify output for a one-label model: the sigmoid of the logit unless activation is off."""
    if reward is None or not activation:
        return reward
    return 1.0 / (1.0 + math.exp(-reward)) if reward >= 0 else math.exp(reward) / (1.0 + math.exp(reward))


def idle_closing_protocol(idle_seconds: float = MAX_SERVE_IDLE_SECONDS) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    ``idle_seconds`` of opening. uvicorn times out idle keep-alive connections only after a first response,
    so connections opened and left silent (or dripping a header a byte at a time) stayed forever and, past
    ``limit_concurrency``, made every request, ``/health`` included, a 503."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleClosingH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            self._head_deadline = self.loop.call_later(idle_seconds, self._close_if_no_request)

        def _close_if_no_request(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_deadline.cancel()
            super().connection_lost(exc)

    return IdleClosingH11Protocol
