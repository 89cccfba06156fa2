"""Ensemble uncertainty for the loop's queue: bootstrap reward heads on the queue model's own features.

Margin uncertainty (|r(a) - r(b)| under one model) says how close the model scores two responses, not
how sure it is: a model can be confidently near-indifferent. An ensemble's members disagree where
the data does not pin the reward down. Training several full reward models (or LoRA adapters) with
different seeds multiplies the cost of every retrain by the ensemble size; here the members share
the queue model's backbone and differ only in the score head, as in Gleave & Irving, "Uncertainty
Estimation for Language Reward Models" (arXiv 2203.07472): each member is the model's head plus a
residual ``delta_k`` fitted by L2-regularised Bradley-Terry logistic regression on a bootstrap
resample of the dataset's labeled pairs (the ``ENSEMBLE_PAIRS`` newest),

    r_k(x) = head(f(x)) + delta_k . f(x),
    delta_k = argmin  mean_{(c, r) in sample_k} -log sigmoid(r_k(c) - r_k(r)) + (L2 / 2) |delta_k|^2

with f(x) the score head's input at the reward token (``RewardScorer.reward_features``). A pair's
uncertainty is the members' disagreement: the standard deviation over members of
sigmoid(r_k(a) - r_k(b)), the probability each gives to a over b (a ranking item: the largest over
its pairs of completions). Cost per rescore: one forward pass per side of each labeled pair used
(plus the open items' passes, which margin ordering needs too), and K small logistic regressions
(milliseconds). What it cannot see: uncertainty inside the backbone's features, which members that
also retrain the backbone would capture at K times the training cost.
"""

from __future__ import annotations

from typing import Any

ENSEMBLE_PAIRS = 2_000  # newest labeled pairs the heads are fitted on
L2 = 1e-2  # the residual's weight decay: members stay near the model's head where data is thin
FIT_STEPS = 50  # L-BFGS iterations per member


def fit_heads(differences: Any, base_margins: Any, size: int, seed: int = 0, weights: Any = None) -> Any:
    """``size`` residual heads (size x features), each fitted on a bootstrap resample of the pairs.
    ``differences``: pairs x features, f(chosen) - f(rejected); ``base_margins``: the model's own
    r(chosen) - r(rejected) per pair, to which a residual head adds; ``weights``: per pair (a
    ranking's pairs 1/C(K,2), as in training), 1 when None."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    differences, base_margins = differences.double(), base_margins.double()
    weights = torch.ones(len(differences), dtype=torch.double) if weights is None else weights.double()
    heads = []
    for _ in range(size):
        sample = torch.randint(len(differences), (len(differences),), generator=generator)
        x, margin, weight = differences[sample], base_margins[sample], weights[sample]
        delta = torch.zeros(differences.shape[1], dtype=torch.double, requires_grad=True)
        optimizer = torch.optim.LBFGS([delta], max_iter=FIT_STEPS, line_search_fn="strong_wolfe")

        def loss(x: Any = x, margin: Any = margin, weight: Any = weight, delta: Any = delta,
                 optimizer: Any = optimizer) -> Any:
            optimizer.zero_grad()
            fit = -(weight * torch.nn.functional.logsigmoid(margin + x @ delta)).sum() / weight.sum()
            value = fit + L2 / 2 * delta.square().sum()
            value.backward()
            return value

        optimizer.step(loss)
        heads.append(delta.detach())
    return torch.stack(heads).float()


def member_rewards(heads: Any, features: Any, base_rewards: Any) -> Any:
    """members x examples: each member's reward of each example (features: examples x features)."""
    return base_rewards[None, :] + heads @ features.T


def disagreement(rewards_a: Any, rewards_b: Any) -> float:
    """Standard deviation over members of sigmoid(r_k(a) - r_k(b)) (population, so 0 when all agree)."""
    import torch

    return float(torch.sigmoid(rewards_a - rewards_b).std(unbiased=False))
