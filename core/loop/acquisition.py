"""Acquisition that chooses pairs: for a prompt with three or more completions, which one pair to ask about.

A candidates import of K completions makes C(K,2) comparisons of one prompt. Asking about all of them spends most
labels on pairs a good model already orders; ActiveUltraFeedback (2026) reached comparable reward models with about
a sixth of the labels by asking, per prompt, about the pair an ensemble finds most worth it. With ``acquisition``
set, the rescore job serves per prompt the one open pair its rule picks first; the prompt's other open pairs are
held back behind every chosen pair (their queue keys start at 1, after the chosen pairs' keys in [0, 1)), so they
are served only when nothing chosen is left.

The ensemble is the loop's bootstrap heads (``core.loop.ensemble``): member k's reward of completion i is
r(x_i) + delta_k . f(x_i); mu_i and sigma_i are the members' mean and (population) standard deviation.

* ``margin``: the pair with the smallest |r(x_i) - r(x_j)| under the model (no ensemble needed);
* ``delta-ucb`` (DeltaUCB): the pair with the largest optimistic quality gap,
  (mu_i + beta sigma_i) - (mu_j - beta sigma_j), beta = ``DELTA_UCB_BETA``;
* ``dts`` (double Thompson sampling): draw a member, take the completion it scores highest (among those in open
  pairs); draw a second member, pair the first with the completion it scores highest among the first's open
  partners. The draws are seeded by the dataset and prompt, so a rescore of the same scores picks the same pair;
* ``random``: a pair chosen by a hash of the dataset, prompt and pair (a control).

``all`` (the default) serves every pair, in the queue's usual order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

ACQUISITIONS = ("all", "margin", "delta-ucb", "dts", "random")
NEEDS_ENSEMBLE = ("delta-ucb", "dts")
DELTA_UCB_BETA = 1.0


@dataclass(frozen=True)
class PairChoice:
    pair: tuple[int, int]  # the chosen pair of completion ids (low id, high id): an open comparison
    rule: str
    params: dict[str, Any]
    mean: dict[int, float]  # per completion id: the members' mean reward (the model's reward without an ensemble)
    std: dict[int, float]  # per completion id: the members' spread (0 without an ensemble)


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def choose_pair(rule: str, completion_ids: list[int], open_pairs: list[tuple[int, int]], members: Any,
                base: Any, *, seed_parts: tuple = ()) -> PairChoice:
    """The open pair ``rule`` picks among ``open_pairs`` (pairs of ids from ``completion_ids``).
    ``members``: members x completions rewards (torch, columns in ``completion_ids`` order) or None without an
    ensemble; ``base``: the model's own rewards per completion (same order). Raises ``ValueError`` for a rule that
    needs an ensemble without one."""
    import torch

    column = {c: k for k, c in enumerate(completion_ids)}
    if members is None:
        if rule in NEEDS_ENSEMBLE:
            raise ValueError(f"the {rule} rule needs the ensemble's heads")
        mean, std = base.double(), torch.zeros(len(completion_ids), dtype=torch.double)
    else:
        mean, std = members.double().mean(0), members.double().std(0, unbiased=False)
    params: dict[str, Any] = {}
    if rule == "margin":
        pair = min(open_pairs, key=lambda p: (abs(float(base[column[p[0]]] - base[column[p[1]]])), p))
    elif rule == "delta-ucb":
        params = {"beta": DELTA_UCB_BETA}
        upper, lower = mean + DELTA_UCB_BETA * std, mean - DELTA_UCB_BETA * std

        def gap(p: tuple[int, int]) -> float:
            i, j = column[p[0]], column[p[1]]
            return max(float(upper[i] - lower[j]), float(upper[j] - lower[i]))

        pair = max(open_pairs, key=lambda p: (gap(p), (-p[0], -p[1])))
    elif rule == "dts":
        generator = torch.Generator().manual_seed(_seed("dts", *seed_parts) % 2 ** 63)
        first_draw, second_draw = (int(torch.randint(len(members), (1,), generator=generator)) for _ in range(2))
        params = {"members": [first_draw, second_draw]}
        in_pairs = sorted({c for p in open_pairs for c in p})
        first = max(in_pairs, key=lambda c: (float(members[first_draw, column[c]]), -c))
        partners = [p[0] if p[1] == first else p[1] for p in open_pairs if first in p]
        second = max(partners, key=lambda c: (float(members[second_draw, column[c]]), -c))
        pair = (min(first, second), max(first, second))
    elif rule == "random":
        pair = min(open_pairs, key=lambda p: (_seed("random", *seed_parts, *p), p))
    else:
        raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS[1:])} to choose a pair, got {rule!r}")
    return PairChoice(pair, rule, params, {c: float(mean[column[c]]) for c in completion_ids},
                      {c: float(std[column[c]]) for c in completion_ids})


def explain_choice(entry: dict[str, Any]) -> str:
    """Why the rescore served this pair, in the rule's own numbers, from one entry of a rescore job's
    acquisition.json (``pair``, ``rule``, ``params``, ``mean`` and ``std`` per completion, ``held_back``)."""
    a, b = entry["pair"]
    mean = {int(c): v for c, v in entry["mean"].items()}
    std = {int(c): v for c, v in entry["std"].items()}
    others = len(entry.get("held_back", []))
    side = f"#{a} {mean[a]:+.3f} ± {std[a]:.3f} vs #{b} {mean[b]:+.3f} ± {std[b]:.3f} (mean ± spread of the heads)"
    if entry["rule"] == "margin":
        return f"smallest margin |{mean[a]:+.3f} − {mean[b]:+.3f}| = {abs(mean[a] - mean[b]):.3f} of {others + 1} open pairs"
    if entry["rule"] == "delta-ucb":
        beta = entry["params"].get("beta", DELTA_UCB_BETA)
        gap = max(mean[a] + beta * std[a] - (mean[b] - beta * std[b]), mean[b] + beta * std[b] - (mean[a] - beta * std[a]))
        return f"largest optimistic gap {gap:.3f} (beta {beta}) of {others + 1} open pairs; {side}"
    if entry["rule"] == "dts":
        first, second = entry["params"].get("members", [None, None])
        return f"Thompson draws: head {first} ranks one side highest, head {second} its best open partner; {side}"
    return f"a seeded random pick of {others + 1} open pairs (the control)"
