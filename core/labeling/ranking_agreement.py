"""How far annotators agree on rankings, and whether the shown position sways them.

* **Kendall's tau-b** (``scipy.stats.kendalltau``, which corrects for ties) between each two
  annotators who ranked the same item, per item and averaged over all such pairs;
* **Kendall's W** (coefficient of concordance, with the tie correction) per item ranked by at least
  two annotators, averaged over those items: 1 = everyone gave the same order, 0 = no agreement;
* **position bias**: the mean place (0 = best, 1 = worst, ties at their mean) of the completion shown
  first, second, ... and Spearman's rho between shown position and rank, averaged over rankings.
  Without bias every shown position has a mean place near 0.5 and rho is near 0.

Rankings flagged "all unacceptable" still order the completions and count here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from itertools import combinations

from core.preferences.rankings import fractional_ranks
from storage.ranking import StoredRanking


@dataclass(frozen=True)
class ItemAgreement:
    item_id: int
    raters: int
    mean_tau: float | None  # over the pairs of raters; None when every order was constant
    w: float | None


@dataclass(frozen=True)
class RankingAgreement:
    ranked_items: int
    rankings: int
    items_with_overlap: int
    mean_tau: float | None
    mean_w: float | None
    position_mean_place: list[float]  # by shown position: the mean place (0 best .. 1 worst)
    position_rho: float | None
    per_item: list[ItemAgreement]  # items ranked by two or more, lowest agreement first


def kendall_w(rankings: list[dict[int, float]]) -> float | None:
    """Kendall's W of ``rankings`` (each: completion -> fractional rank) over the same completions,
    with the tie correction (Kendall & Babington Smith 1939); None when it is undefined."""
    m, ids = len(rankings), sorted(rankings[0])
    n = len(ids)
    if m < 2 or n < 2:
        return None
    sums = [sum(r[c] for r in rankings) for c in ids]
    mean = m * (n + 1) / 2
    s = sum((total - mean) ** 2 for total in sums)
    ties = 0.0
    for ranks in rankings:
        counts: dict[float, int] = {}
        for value in ranks.values():
            counts[value] = counts.get(value, 0) + 1
        ties += sum(t ** 3 - t for t in counts.values())
    denominator = m * m * (n ** 3 - n) - m * ties
    return 12 * s / denominator if denominator > 0 else None


def _tau(first: dict[int, float], second: dict[int, float]) -> float | None:
    from scipy.stats import kendalltau

    ids = sorted(first)
    tau = kendalltau([first[c] for c in ids], [second[c] for c in ids]).statistic  # tau-b
    return None if tau != tau else float(tau)  # NaN when one order is constant (all tied)


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    rho = spearmanr(xs, ys).statistic
    return None if rho != rho else float(rho)


def agreement_of(rankings: dict[int, list[StoredRanking]]) -> RankingAgreement:
    per_item, taus, ws = [], [], []
    by_position: dict[int, list[float]] = {}
    rhos = []
    count = 0
    for item_id, given in sorted(rankings.items()):
        count += len(given)
        ranks = [fractional_ranks(r.groups) for r in given]
        for ranking, rank in zip(given, ranks, strict=True):
            k = len(rank)
            if ranking.shown and sorted(ranking.shown) == sorted(rank) and k > 1:
                places = [(rank[c] - 1) / (k - 1) for c in ranking.shown]
                for position, place in enumerate(places):
                    by_position.setdefault(position, []).append(place)
                rho = _spearman(list(range(k)), places)
                if rho is not None:
                    rhos.append(rho)
        if len(given) < 2:
            continue
        item_taus = [t for a, b in combinations(ranks, 2) if (t := _tau(a, b)) is not None]
        taus.extend(item_taus)
        w = kendall_w(ranks)
        if w is not None:
            ws.append(w)
        per_item.append(ItemAgreement(item_id, len(given), statistics.fmean(item_taus) if item_taus else None, w))
    per_item.sort(key=lambda item: (item.w if item.w is not None else 2.0, item.item_id))
    return RankingAgreement(
        ranked_items=len(rankings), rankings=count, items_with_overlap=len(per_item),
        mean_tau=statistics.fmean(taus) if taus else None, mean_w=statistics.fmean(ws) if ws else None,
        position_mean_place=[statistics.fmean(by_position[p]) for p in sorted(by_position)],
        position_rho=statistics.fmean(rhos) if rhos else None, per_item=per_item,
    )
