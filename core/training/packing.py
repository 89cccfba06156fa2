"""Padding-free batches (``padding_free``): a batch's sequences laid end to end in one row, no pad tokens.

TRL's ``RewardTrainer`` pads every chosen and rejected sequence of a batch to the batch's longest and
has no packing (trl#3780); on long-tailed reasoning data most of a batch can be padding, computed
through every layer. Here the collator drops the padding: the batch becomes one row of all its
tokens, with position ids restarting at 0 for each sequence and the sequence boundaries as
``cu_seq_lens_q`` / ``cu_seq_lens_k`` (the keyword arguments transformers' flash-attention varlen path
reads, passed through the model's ``**kwargs`` to every attention layer). Attention must not cross
the boundaries, so the model's attention becomes ``VARLEN_ATTENTION``: causal SDPA run on each
sequence's own slice (no mask: the fused causal kernel, work sum(L_i^2) rather than (sum L_i)^2),
and plain SDPA for any call without boundaries (evaluation of a single sequence, scoring).

The reward of a sequence is the score head at its last token (where the sequence classifier pools,
as its last token is EOS and nothing follows it), read from the head's full output captured by a
hook, so the call still goes through the model's wrappers (DDP, PEFT). The loss is
``core.training.grouped.weighted_bradley_terry`` over the batch's pairs, which with weights 1 is TRL's
own loss; the rewards equal the padded batch's (checked in tests/test_packing.py).
"""

from __future__ import annotations

from typing import Any

VARLEN_ATTENTION = "rewardlab_varlen"


def supports(model: Any) -> str | None:
    """None if padding-free batches can run on ``model``; else why not (the job falls back to padded batches)."""
    from core.attention_functions import obstacle

    why_not = obstacle(model, VARLEN_ATTENTION, takes_over=("sdpa", "eager"))
    if why_not is None and (getattr(model.config, "is_encoder_decoder", False) or not hasattr(model, "score")):
        why_not = "it is not a decoder with a score head on every position"
    return why_not


def enable(model: Any) -> None:
    from core.attention_functions import install

    install(model, VARLEN_ATTENTION, _varlen_attention, _padding_mask)


def _padding_mask(*args: Any, **kwargs: Any) -> Any:
    """SDPA's mask for a padded batch; none without padding. Unpadded input is one sequence per row
    or a packed row, whose boundaries the attention function applies itself: transformers would
    otherwise build a (sum L_i)^2 block mask from the packed position ids."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    import torch
    import torch.nn.functional as F

    boundaries = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None:
        # A padded batch (TRL's collator when padding_free is off, or a caller's own): SDPA with its mask.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    if boundaries is None:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling)
    else:
        cuts = boundaries.tolist()
        out = torch.cat([F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                        dropout_p=dropout, is_causal=True, scale=scaling)
                         for a, b in zip(cuts[:-1], cuts[1:], strict=True)], dim=2)
    return out.transpose(1, 2).contiguous(), None


class PackingCollator:
    """Wraps a pair collator (TRL's, ``WeightedPairCollator`` or ``GroupCollator``): its padded batch
    becomes one row of every sequence's tokens, with each pair as indices into the sequences
    (TRL's batches: chosen rows first, then rejected), its margin (0 without) and weight (1 without)."""

    def __init__(self, padded_collator: Any) -> None:
        self.padded_collator = padded_collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.padded_collator(examples)
        input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask").bool()
        lengths = attention_mask.sum(dim=1)
        if "chosen_index" not in batch:
            n = input_ids.shape[0] // 2
            batch["chosen_index"], batch["rejected_index"] = torch.arange(n), torch.arange(n, 2 * n)
            batch.setdefault("margin", torch.zeros(n))
            batch["weight"] = torch.ones(n)
        boundaries = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        boundaries[1:] = lengths.cumsum(0)
        batch.update({
            "input_ids": input_ids[attention_mask][None],  # row by row: each sequence's tokens stay together
            "position_ids": torch.cat([torch.arange(int(n)) for n in lengths])[None],
            "cu_seq_lens_q": boundaries, "cu_seq_lens_k": boundaries,
            "max_length_q": int(lengths.max()), "max_length_k": int(lengths.max()),
            "sequence_ends": (boundaries[1:] - 1).long(),
        })
        return batch


PACKED_MODEL_INPUTS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def packed_rewards(model: Any, score_head: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(reward per sequence, the model's outputs) for a ``PackingCollator`` batch. ``score_head`` is
    the model's score layer (under its wrappers); its output at every position is captured."""
    captured: list[Any] = []
    handle = score_head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        outputs = model(**{name: inputs[name] for name in PACKED_MODEL_INPUTS}, use_cache=False)
    finally:
        handle.remove()
    return captured[-1][0, inputs["sequence_ends"], 0], outputs
