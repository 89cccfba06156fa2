"""Attention for trajectory probes: each EOS probe attends to its own prefix of a cached example.

A trajectory asks, for every response token k, the reward of the example cut after k and closed (EOS;
in a chat, the template's end of turn).
One causal forward over the example caches its keys and values; then chunks of EOS probes run, probe
k at position k + 1 seeing cached keys 0..k and its own key. Written as one masked attention
(``engine._cached_prefix_probes``' generic path) every chunk computes scores against the whole
cache, and the key/value cache is concatenated and cut back once per chunk: at 16k-32k tokens that
made a trajectory ~7x one forward pass.

Here a chunk's attention is split by what the probes share:
* keys ``0..c_first`` are visible to every probe of the chunk (c_first: the chunk's first cut), so
  they go through the fused attention kernel with no mask, the query heads of one key/value head
  folded into its query length (grouped-query attention needs no copy of the cache);
* keys ``c_first+1..c_last`` (a band no wider than the chunk) and each probe's own key are a small
  masked block computed directly;
* the two are merged exactly through their log-sum-exps (the rule flash attention uses for blocks).
No tensor has a dimension of the sequence length squared, and the cache is read, never copied.

It is an attention function registered with transformers' ``AttentionInterface`` under
``PROBE_ATTENTION``; outside a probe pass (``probing``), in any thread, it is the SDPA attention
transformers would have used, so ordinary scoring is unchanged.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

PROBE_ATTENTION = "rewardlab_probe"

# Keys per block in the portable path (no fused kernel that returns the log-sum-exp): the block's
# scores are heads x probes x block floats.
PORTABLE_KEY_BLOCK = 4096

_active = threading.local()


def enable(model: Any) -> bool:
    """Switches a decoder's attention to the probe-aware function if it runs SDPA on every layer.
    Returns whether it did; a model it cannot serve (other kernels, sliding windows) keeps its own."""
    from transformers.masking_utils import sdpa_mask

    from core.attention_functions import install, obstacle

    if obstacle(model, PROBE_ATTENTION) is not None:
        return False
    install(model, PROBE_ATTENTION, _attention, sdpa_mask)
    return model.config._attn_implementation == PROBE_ATTENTION


@contextmanager
def probing(prefix: Any, cuts: Any, own_visible: Any = None) -> Iterator[None]:
    """Within the block, attention in this thread treats its queries as probe tokens after ``cuts``
    (ascending token indices, one per query) over ``prefix``, the example's key/value cache;
    ``own_visible`` (queries x queries) says which probe tokens each sees (None: only itself)."""
    _active.state = (prefix, cuts, own_visible)
    try:
        yield
    finally:
        _active.state = None


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
               scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    state = getattr(_active, "state", None)
    if state is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prefix, cuts, own_visible = state
    layer = prefix.layers[module.layer_idx]
    out = probe_attention(query, key, value, layer.keys, layer.values, cuts,
                          scaling if scaling is not None else query.shape[-1] ** -0.5, own_visible=own_visible)
    return out.transpose(1, 2).contiguous(), None


def probe_attention(query: Any, key: Any, value: Any, cached_keys: Any, cached_values: Any, cuts: Any,
                    scale: float, *, fused: bool | None = None, own_visible: Any = None) -> Any:
    """Attention of ``m`` probe tokens (query/key/value: batch 1 x heads x m x head_dim, the probes'
    own projections) where token i sees cached positions 0..cuts[i] and the probe tokens j with
    ``own_visible[i, j]`` (None: itself only). ``cached_keys`` / ``cached_values``: 1 x kv_heads x
    length x head_dim. Returns 1 x heads x m x head_dim."""
    import torch

    heads, m, dim = query.shape[1], query.shape[2], query.shape[3]
    kv_heads = cached_keys.shape[1]
    groups = heads // kv_heads
    first, last = int(cuts[0]), int(cuts[-1])
    # Shared prefix 0..first: every probe sees all of it, so no mask, through the fused kernel.
    shared_k, shared_v = cached_keys[:, :, : first + 1], cached_values[:, :, : first + 1]
    folded = query.reshape(1, kv_heads, groups * m, dim)  # head h uses kv head h // groups
    shared_out, shared_lse = _attend_with_lse(folded, shared_k, shared_v, scale, fused)
    shared_out = shared_out.reshape(1, heads, m, dim).float()
    shared_lse = shared_lse.reshape(1, heads, m, 1).float()
    # The band first+1..last (probe i sees up to cuts[i]) and each probe's own key: small and masked.
    band_k = cached_keys[:, :, first + 1 : last + 1].repeat_interleave(groups, dim=1).float()
    band_v = cached_values[:, :, first + 1 : last + 1].repeat_interleave(groups, dim=1).float()
    q = query.float()
    band_scores = (q @ band_k.transpose(-1, -2)) * scale  # 1 x heads x m x band
    positions = torch.arange(first + 1, last + 1, device=query.device)
    hidden = positions[None, :] > cuts.to(query.device)[:, None]
    band_scores = band_scores.masked_fill(hidden[None, None], float("-inf"))
    own_k = key.repeat_interleave(groups, dim=1).float()
    own_v = value.repeat_interleave(groups, dim=1).float()
    if own_visible is None:  # one token per probe: it sees itself only
        own_scores = (q * own_k).sum(-1, keepdim=True) * scale  # 1 x heads x m x 1
    else:  # several tokens per probe: each sees its own probe's tokens up to itself
        own_scores = ((q @ own_k.transpose(-1, -2)) * scale).masked_fill(~own_visible[None, None], float("-inf"))
    logits = torch.cat([shared_lse, band_scores, own_scores], dim=-1)
    weights = torch.softmax(logits, dim=-1)
    band = band_k.shape[2]
    own_weights = weights[..., 1 + band :]
    own_out = own_weights * own_v if own_visible is None else own_weights @ own_v
    out = weights[..., :1] * shared_out + weights[..., 1 : 1 + band] @ band_v + own_out
    return out.to(query.dtype)


def _attend_with_lse(query: Any, key: Any, value: Any, scale: float, fused: bool | None) -> tuple[Any, Any]:
    """Unmasked attention and its log-sum-exp per query (b x h x q x d, b x h x q)."""
    import torch

    kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if fused is None:
        fused = query.device.type == "cpu" and kernel is not None
    if fused:
        # The kernel SDPA itself runs on CPU; its public wrapper drops the log-sum-exp we merge with.
        out, lse = kernel(query, key, value, 0.0, False, attn_mask=None, scale=scale)
        return out, lse
    # Portable: key blocks with a running log-sum-exp, in float32 (memory: one block of scores).
    q = query.float()
    total_lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    out = torch.zeros_like(q)
    for begin in range(0, key.shape[2], PORTABLE_KEY_BLOCK):
        k = key[:, :, begin : begin + PORTABLE_KEY_BLOCK].float()
        v = value[:, :, begin : begin + PORTABLE_KEY_BLOCK].float()
        scores = (q @ k.transpose(-1, -2)) * scale
        block_lse = torch.logsumexp(scores, dim=-1)
        new_lse = torch.logaddexp(total_lse, block_lse)
        out = out * torch.exp(total_lse - new_lse)[..., None] + torch.softmax(scores, -1) @ v * torch.exp(
            block_lse - new_lse)[..., None]
        total_lse = new_lse
    return out, total_lse
