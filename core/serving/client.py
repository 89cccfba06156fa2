"""The trainer's side of the reward server: a reward function for TRL that scores over HTTP.

Importable without torch, transformers or gradio (``tests/test_layers.py`` checks it in a fresh
interpreter): the policy's trainer holds no reward model, and needs none of the reward model's stack.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from core.limits import MAX_SERVE_TEXTS
from core.serving.http_client import post_json


def make_remote_reward_fn(url: str, *, api_key: str | None = None, timeout: float = 300.0,
                          retries: int = 3) -> Callable[..., list[float | None]]:
    """A reward function for TRL that asks a reward server (``python app.py serve-rm``) at ``url``:
    ``GRPOTrainer(reward_funcs=[make_remote_reward_fn("http://127.0.0.1:8001")])``.

    Each call POSTs ``prompts[i]`` and ``completions[i]`` (text or chat, as TRL passes them) to the
    server's ``/score`` in requests of at most ``MAX_SERVE_TEXTS`` completions; the server formats
    them as the model was trained. A completion over the model's max_length gets None, which TRL
    counts as "no reward from this function" (NaN) instead of a reward of a truncated text.
    Unreachable or busy servers are retried ``retries`` times with backoff; a refusal (4xx) raises
    ``RemoteError`` with the server's message at once.
    """
    endpoint = url.rstrip("/") + "/score"

    def reward_fn(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions: TRL passes one prompt per completion")
        rewards: list[float | None] = []
        for start in range(0, len(completions), MAX_SERVE_TEXTS):
            body = {"prompts": list(prompts[start : start + MAX_SERVE_TEXTS]),
                    "completions": list(completions[start : start + MAX_SERVE_TEXTS])}
            rewards += post_json(endpoint, body, api_key=api_key, timeout=timeout, retries=retries)["rewards"]
        return rewards

    reward_fn.__name__ = "rewardlab_remote"
    return reward_fn
