"""What ``serve-rm`` and ``check-server`` are told: the reward models, how their rewards combine, where
the reference samples come from, and (for the server) where it listens and how it batches.

The command line is built from these dataclasses (``core.config_fields``), so a new option is one
field. Both commands share ``RewardModelsConfig``: ``check-server`` must compute exactly what the
server computes, from the same models, reduction, normalization and samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.loopback import is_loopback
from core.config_fields import ConfigError, config_field
from core.limits import MAX_SERVED_MODELS, MAX_SERVE_QUEUE
from core.serving.reward_fn import REDUCTIONS

DEFAULT_PARITY_TOLERANCE = 1e-4
DTYPES = ("auto", "float32", "bfloat16")


@dataclass(kw_only=True)
class RewardModelsConfig:
    """The reward models and how their rewards are combined (shared by the server and its check)."""

    model: list[str] = config_field(help="reward model: a registered name (name@vN for an older version) or a local "
                                    "folder; repeat --model for an ensemble")
    reduction: str = config_field("mean", choices=REDUCTIONS,
                                  help="how an ensemble's rewards combine: mean, or min (the guides' remedy for reward hacking)")
    normalize: bool = config_field(False, help="z-score each model's rewards against its reference samples, clipped at "
                                   "5 standard deviations (needs a registered model or --samples)")
    samples: Optional[Path] = config_field(None, help="reference rows (prompt, response; .jsonl/.json/.csv/.parquet) for the "
                                           "parity check and --normalize (default: the registered model's held-out pairs)")
    parity_samples: int = config_field(32, help="how many reference samples the parity check scores both ways")
    parity_tolerance: float = config_field(DEFAULT_PARITY_TOLERANCE,
                                           help="largest |reward difference| the parity check accepts")
    dtype: str = config_field("auto", choices=DTYPES,
                              help="weights' dtype: auto = bfloat16 on a GPU that has it, else float32. bfloat16 rounds "
                              "rewards by ~1e-2, above the parity tolerance: serve float32 to keep parity")
    api_key_env: Optional[str] = config_field(None, help="environment variable holding the API key (a bearer token); "
                                              "required to listen on anything but loopback")
    db: Optional[str] = config_field(None, help="store whose registered models --model may name (default: $REWARDLAB_DB, "
                                     "or data/rewardlab.db when it exists)")

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            self.model = [self.model]
        self.model = [name.strip() for name in (self.model or []) if name and name.strip()]
        if not self.model:
            raise ConfigError("give a reward model: --model NAME (registered, name@vN) or --model FOLDER")
        if len(self.model) > MAX_SERVED_MODELS:
            raise ConfigError(f"{len(self.model)} models given; an ensemble holds at most {MAX_SERVED_MODELS}")
        if len(set(self.model)) != len(self.model):
            raise ConfigError("a model is given twice; give each --model once")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        if self.samples is not None:
            self.samples = Path(self.samples)
            if not self.samples.is_file():
                raise ConfigError(f"--samples {self.samples}: no such file")
        if not 1 <= self.parity_samples <= 1024:
            raise ConfigError(f"parity_samples must be between 1 and 1024, got {self.parity_samples}")
        if not 0 < self.parity_tolerance < 1:
            raise ConfigError(f"parity_tolerance must be above 0 and below 1, got {self.parity_tolerance}")
        if self.api_key_env is not None:
            if not self.api_key_env.strip():
                raise ConfigError("--api-key-env is empty: give the name of an environment variable, e.g. REWARDLAB_RM_KEY")
            if len(self.api_key) < 16:
                raise ConfigError(f"${self.api_key_env} is unset or shorter than 16 characters; set it to a long random "
                                  f"token (export {self.api_key_env}=$(openssl rand -hex 32))")

    @property
    def torch_dtype(self):  # noqa: ANN201 (a torch.dtype, or None for the engine's choice)
        import torch

        return None if self.dtype == "auto" else getattr(torch, self.dtype)

    @property
    def api_key(self) -> str:
        """The key from the environment ('' without one): read when needed, never stored in a record."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


@dataclass(kw_only=True)
class ServerConfig(RewardModelsConfig):
    """Serve reward models over HTTP to RL trainers (OpenRLHF, verl, TRL)."""

    host: str = config_field("127.0.0.1", help="address to listen on; anything but loopback needs --api-key-env")
    port: int = config_field(8001, help="port to listen on")
    batch_wait_ms: float = config_field(5.0, help="how long the first request of a batch waits for others to join it")
    max_batch_texts: int = config_field(256, help="most completions scored in one batch (requests are never split)")
    batch_tokens: int = config_field(2048, help="most tokens in one batched forward pass (speed and memory)")
    max_queue: int = config_field(64, help=f"requests waiting to be scored before the server answers 503 "
                                  f"(at most {MAX_SERVE_QUEUE})")
    heads: Optional[Path] = config_field(None, help="the loop's ensemble heads of the one served model (a rescore "
                                         "job's ensemble-heads.pt, data/jobs/job-N/): each reward's spread, the standard "
                                         "deviation over the heads, comes back in /score's reward_spread and OpenRLHF's "
                                         "extra_logs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.api_key_env and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host} without an API key: anyone who reaches the port could use the "
                "server. Set a token (export REWARDLAB_RM_KEY=$(openssl rand -hex 32)) and pass "
                "--api-key-env REWARDLAB_RM_KEY, or listen on 127.0.0.1"
            )
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be between 1 and 65535, got {self.port}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms}")
        if not 1 <= self.max_batch_texts <= 4096:
            raise ConfigError(f"max_batch_texts must be between 1 and 4096, got {self.max_batch_texts}")
        if self.batch_tokens < 16:
            raise ConfigError(f"batch_tokens must be at least 16, got {self.batch_tokens}")
        if self.heads is not None:
            self.heads = Path(self.heads)
            if not self.heads.is_file():
                raise ConfigError(f"--heads {self.heads}: no such file")
            if len(self.model) > 1:
                raise ConfigError("--heads belong to one model: serve that model alone (an ensemble of several models "
                                  "has its spread over the models already)")
        if not 1 <= self.max_queue <= MAX_SERVE_QUEUE:
            raise ConfigError(f"max_queue must be between 1 and {MAX_SERVE_QUEUE}, got {self.max_queue}")


@dataclass(kw_only=True)
class CheckServerConfig(RewardModelsConfig):
    """Compare a running reward server with the same models scored in this process."""

    url: str = config_field(help="the server's address, e.g. http://127.0.0.1:8001 (RewardLab, OpenRLHF or vLLM pooling)")
    served_model_name: Optional[str] = config_field(None, help="the 'model' field sent to /classify (a vLLM server's "
                                                    "--served-model-name; default: none sent)")
    timeout: float = config_field(120.0, help="seconds to wait for each response")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {self.url!r}")
        self.url = self.url.rstrip("/")
        if self.timeout <= 0:
            raise ConfigError("timeout must be above 0 seconds")
