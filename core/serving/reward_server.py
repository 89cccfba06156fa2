"""``python app.py serve-rm``: serve reward models to RL trainers, and ``check-server``: compare any
reward server with in-process scoring.

Start-up, in order: resolve and load the models (registry ``name@vN`` or folders), find the
reference samples and fit normalizers (``served_models``), start the batcher and the HTTP server
on the configured address, then run the parity check through that very address: while it runs
the scoring routes answer 503 to everyone but the check (``routes.admit``). On a difference
above the tolerance the server stops and ``serve_reward_models`` raises ``ParityFailed``: it never
serves rewards that differ from what ``score`` computes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from core.limits import (
    MAX_SERVE_BODY_BYTES,
    MAX_SERVE_CHARS,
    MAX_SERVE_MESSAGES,
    MAX_SERVE_TEXTS,
    MAX_SERVE_TRAJECTORY_TEXTS,
)
from core.serving.batching import DynamicBatcher
from core.serving.parity import ParityFailed, ParityReport, check_parity
from core.serving.reward_service import RewardService
from core.serving.served_models import ReferenceSamples, ServedModel, load_ensemble_heads, load_served_models
from core.serving.routes import PARITY_HEADER, SCORING_APIS, ServerState, build_app, idle_closing_protocol
from core.serving.config import CheckServerConfig, ServerConfig

log = logging.getLogger(__name__)


def local_url(host: str, port: int) -> str:
    """The address this machine reaches a server listening on ``host`` at (a wildcard means loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_info(config: ServerConfig, models: list[ServedModel], reference: ReferenceSamples,
                batcher: DynamicBatcher) -> Callable[[], dict[str, Any]]:
    def info() -> dict[str, Any]:
        return {
            "server": "rewardlab",
            "apis": list(SCORING_APIS),
            "model": "+".join(model.reference for model in models),
            "models": [model.info() for model in models],
            "reduction": config.reduction,
            "normalize": config.normalize,
            "reference_samples": reference.source,
            "limits": {"texts_per_request": MAX_SERVE_TEXTS, "chars_per_text": MAX_SERVE_CHARS,
                       "body_bytes": MAX_SERVE_BODY_BYTES, "trajectory_texts_per_request": MAX_SERVE_TRAJECTORY_TEXTS,
                       "messages_per_prompt": MAX_SERVE_MESSAGES, "max_queue": config.max_queue},
            "batching": {"wait_ms": config.batch_wait_ms, "max_batch_texts": config.max_batch_texts,
                         "batch_tokens": config.batch_tokens, **vars(batcher.stats)},
        }

    return info


def serve_reward_models(config: ServerConfig, *, say: Callable[[str], None] = print) -> ParityReport:
    """Serve until interrupted; return the start-up parity report. Raises ``UnknownModel``,
    ``ModelLoadError``, ``InputRejected``, ``ConfigError`` before listening, ``ParityFailed`` after
    a failed check (the server has stopped), ``OSError`` when the port is taken."""
    import uvicorn

    models, reference = load_served_models(config, batch_tokens=config.batch_tokens)
    if config.heads is not None:
        load_ensemble_heads(models[0], config.heads)
        say(f"ensemble heads: {models[0].heads_source}")
    for model in models:
        say(f"loaded {model.reference}: {type(model.scorer.hf_model).__name__}, max_length {model.scorer.max_length}"
            + (f", normalized (mean {model.normalizer.mean:.4f}, std {model.normalizer.std:.4f})" if model.normalizer else ""))
    batcher = DynamicBatcher([model.scorer for model in models], wait_seconds=config.batch_wait_ms / 1000,
                             max_batch_sequences=config.max_batch_texts, max_queue=config.max_queue,
                             with_features=[m for m, model in enumerate(models) if model.heads is not None]).start()
    service = RewardService(models, config.reduction, batcher)
    state = ServerState()
    app = build_app(service, api_key=config.api_key, state=state, info=server_info(config, models, reference, batcher))
    # Scoring requests past MAX_SERVE_IN_FLIGHT get a 503 from the routes before their bodies are read; uvicorn's
    # own limit_concurrency is not used, as it counts idle connections too (and /health would answer 503).
    # Connections silent before their request head are closed (``idle_closing_protocol``).
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           timeout_keep_alive=30, http=idle_closing_protocol()))
    url = local_url(config.host, config.port)
    outcome: dict[str, Any] = {}

    def check_then_open() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.should_exit:
            return
        try:
            report = check_parity(url, models, reference, reduction=config.reduction, tolerance=config.parity_tolerance,
                                  limit=config.parity_samples, api_key=config.api_key or None,
                                  headers={PARITY_HEADER: state.parity_token})
        except Exception as error:  # noqa: BLE001 (whatever stops the check, the server must not serve)
            outcome["error"] = error
            state.phase = "failed"
            server.should_exit = True
            return
        outcome["report"] = report
        state.parity = report.as_dict()
        for line in report.lines():
            say(line)
        if report.passed:
            state.phase = "serving"
            say(f"serving {service.name} on {url} (POST /score, /get_reward, /classify; GET /health, /info)"
                + ("; API key required" if config.api_key else ""))
        else:
            state.phase = "failed"
            server.should_exit = True

    checker = threading.Thread(target=check_then_open, name="parity-check", daemon=True)
    checker.start()
    try:
        server.run()
    except SystemExit:  # uvicorn exits the process when it cannot bind; say it as an error instead
        raise OSError(f"cannot listen on {config.host}:{config.port} (is the port taken?)") from None
    finally:
        server.should_exit = True
        checker.join(timeout=600)
        batcher.close()
    if "error" in outcome:
        raise RuntimeError(f"the start-up parity check could not run against {url}: {outcome['error']}")
    report = outcome.get("report")
    if report is None:
        raise OSError(f"the server did not start on {url} (is the port taken?)")
    if not report.passed:
        raise ParityFailed(report)
    return report


def check_remote_server(config: CheckServerConfig) -> ParityReport:
    """Compare the server at ``config.url`` with the same models scored here. Raises what
    ``load_served_models`` raises, and ``RemoteError`` when the server cannot be reached."""
    models, reference = load_served_models(config)
    return check_parity(config.url, models, reference, reduction=config.reduction, tolerance=config.parity_tolerance,
                        limit=config.parity_samples, api_key=config.api_key or None, timeout=config.timeout,
                        served_model_name=config.served_model_name)
