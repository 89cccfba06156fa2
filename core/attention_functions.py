"""Custom attention functions installed into transformers models (``AttentionInterface``).

Two parts of RewardLab replace a decoder's attention: trajectory probes (``core.scoring.probe_attention``)
and padding-free training batches (``core.training.packing``). Both register a function and its mask
function under a name, switch a model to it, and can only do so for the same kind of model.
"""

from __future__ import annotations

from typing import Any, Callable


def obstacle(model: Any, name: str, takes_over: tuple[str, ...] = ("sdpa",)) -> str | None:
    """Why ``model`` cannot run the attention function ``name`` in place of its own, or None if it can:
    its implementation must be one of ``takes_over`` (or ``name`` already), no sliding window (a
    windowed layer does not see the whole sequence), and a model class that takes custom attention."""
    config = model.config
    if getattr(config, "_attn_implementation", None) not in (*takes_over, name):
        return f"its attention implementation is {config._attn_implementation!r}, not SDPA"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "it uses sliding-window attention"
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not take a custom attention function"
    return None


def install(model: Any, name: str, attention: Callable[..., Any], mask: Callable[..., Any]) -> None:
    """Register ``attention`` and ``mask`` under ``name`` (a dict entry: registering again replaces it)
    and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)
    model.set_attn_implementation(name)
