"""Which unlabelled rows to label next: the query strategies, as pure functions of arrays.

Each strategy takes what a model says about the pool (``probabilities [N, C]`` and ``embeddings [N, H]``,
L2-normalised), which rows are already labelled, a budget and a seeded generator, and returns the indices of the
rows to label, best first. None of them looks at a true label, and none returns a labelled row or a row twice.

* ``random`` -- the baseline every strategy must beat (and, per "On the Fragility of Active Learners", often does
  not).
* ``margin`` -- uncertainty: the smallest gap between the two most likely classes first.
* ``entropy`` -- uncertainty: the highest entropy of the predicted distribution first.
* ``kcenter`` -- diversity: greedy k-centre on the embeddings, each pick the row farthest from every labelled and
  already picked row (cosine distance), so the batch covers the pool.
* ``badge`` -- uncertainty and diversity at once (Ash et al., 2020): k-means++ seeding over each row's gradient
  embedding, ``(p - onehot(argmax p)) x embedding``; its length grows with the uncertainty, and the D^2 sampling
  spreads the picks, so a batch is uncertain without being redundant.

A round 0 without a trained model (:func:`first_batch`) covers the classes and the pool: with label names, the
budget is shared across the classes, each taking diverse rows among those the names point to; without them, plain
k-centre.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConfigError


def random_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(embeddings), labelled)
    return rng.permutation(candidates)[:budget]


def margin_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(probabilities), labelled)
    top = np.sort(probabilities[candidates], axis=1)
    margin = top[:, -1] - (top[:, -2] if top.shape[1] > 1 else 0.0)
    return candidates[_ranked(margin, rng)][:budget]


def entropy_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(probabilities), labelled)
    p = np.clip(probabilities[candidates], 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1)
    return candidates[_ranked(-entropy, rng)][:budget]


def kcenter_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(embeddings), labelled)
    return candidates[_k_centre(embeddings[candidates], embeddings[np.asarray(labelled, dtype=np.int64)], budget,
                                rng)]


def badge_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(embeddings), labelled)
    p = probabilities[candidates]
    residual = p.copy()
    residual[np.arange(len(p)), p.argmax(axis=1)] -= 1.0  # the gradient of the loss if the guess were the label
    gradients = (residual[:, :, None] * embeddings[candidates][:, None, :]).reshape(len(p), -1)
    return candidates[_k_means_pp(gradients, budget, rng)]


STRATEGIES: dict[str, Callable] = {"random": random_rows, "margin": margin_rows, "entropy": entropy_rows,
                                   "kcenter": kcenter_rows, "badge": badge_rows}
DEFAULT_STRATEGY = "badge"


def select(strategy: str, probabilities: np.ndarray, embeddings: np.ndarray, labelled, budget: int,
           seed: int = 0) -> np.ndarray:
    """Indices of ``budget`` unlabelled rows to label next, best first (fewer when fewer are left).

    Args:
        strategy: one of ``STRATEGIES``.
        probabilities: ``[N, C]`` the model's class probabilities for the pool.
        embeddings: ``[N, H]`` its text embeddings (L2-normalised).
        labelled: indices of rows already labelled (never chosen).
        budget: how many rows to choose.
        seed: ties and random draws follow it: the same inputs and seed give the same rows.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"select: --strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"select: --budget must be a whole number >= 1, got {budget!r}")
    if len(probabilities) != len(embeddings):
        raise ValueError(f"{len(probabilities)} rows of probabilities but {len(embeddings)} embeddings")
    chosen = STRATEGIES[strategy](np.asarray(probabilities, dtype=np.float64), np.asarray(embeddings, np.float32),
                                  np.asarray(sorted(set(int(i) for i in labelled)), dtype=np.int64), budget,
                                  np.random.default_rng(seed))
    return np.asarray(chosen, dtype=np.int64)


def first_batch(embeddings: np.ndarray, budget: int, seed: int = 0, name_embeddings: np.ndarray | None = None,
                labelled=()) -> np.ndarray:
    """Round 0, before any model: rows that cover the pool and, with label names, every class.

    With ``name_embeddings`` (``[C, H]``, the label names' embeddings), each row goes to the name it is closest to,
    and the budget is shared across the names (as evenly as the rows allow); each name's share is k-centre among the
    rows closest to it, starting from the row most like the name. Without names: k-centre over the pool.
    """
    rng = np.random.default_rng(seed)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    candidates = _unlabelled(len(embeddings), np.asarray(sorted(set(labelled)), dtype=np.int64))
    if name_embeddings is None:
        return candidates[_k_centre(embeddings[candidates], embeddings[:0], budget, rng)]
    similarity = embeddings[candidates] @ np.asarray(name_embeddings, dtype=np.float32).T
    nearest = similarity.argmax(axis=1)
    groups = [np.flatnonzero(nearest == c) for c in range(similarity.shape[1])]
    shares = _fair_shares([len(g) for g in groups], min(budget, len(candidates)))
    picked_per_class = []
    for c, (group, share) in enumerate(zip(groups, shares)):
        if share == 0:
            picked_per_class.append(np.zeros(0, dtype=np.int64))
            continue
        start = group[np.argmax(similarity[group, c])]  # the row most like the name opens its share
        rest = group[group != start]
        more = _k_centre(embeddings[candidates[rest]], embeddings[candidates[[start]]], share - 1, rng)
        picked_per_class.append(candidates[np.concatenate([[start], rest[more]])])
    # Interleave the classes, so that an annotator who stops early has seen every class.
    order = [rows[i] for i in range(max(shares, default=0)) for rows in picked_per_class if i < len(rows)]
    return np.asarray(order, dtype=np.int64)


# ---- helpers ---------------------------------------------------------------------------------------------------


def _unlabelled(n: int, labelled: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(labelled, dtype=np.int64)] = False
    return np.flatnonzero(mask)


def _ranked(score: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by ascending ``score``, ties broken by the seeded generator (not by position in the file)."""
    return np.lexsort((rng.random(len(score)), score))


def _k_centre(points: np.ndarray, centres: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-centre: ``k`` indices of ``points``, each the farthest (cosine) from ``centres`` and the earlier
    picks; with no centres the first pick is a random point."""
    k = min(k, len(points))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if len(centres):
        distance = 1.0 - (points @ centres.T).max(axis=1)
    else:
        distance = np.full(len(points), np.inf, dtype=np.float32)
    picks = []
    for _ in range(k):
        best = np.flatnonzero(distance == distance.max())
        pick = int(best[0] if len(best) == 1 else rng.choice(best))
        picks.append(pick)
        distance = np.minimum(distance, 1.0 - points @ points[pick])
        distance[pick] = -np.inf
    return np.asarray(picks, dtype=np.int64)


def _k_means_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the first pick is the longest vector, each next one drawn with probability proportional to
    its squared distance from the nearest pick."""
    k = min(k, len(points))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    points = np.asarray(points, dtype=np.float64)  # the draw's probabilities must sum to one: no float32 rounding
    squared_norms = (points * points).sum(axis=1)
    first = int(np.argmax(squared_norms))
    picks = [first]
    distance = np.maximum(squared_norms + squared_norms[first] - 2.0 * points @ points[first], 0.0)
    distance[first] = 0.0
    for _ in range(k - 1):
        total = distance.sum()
        if total <= 0:  # every row left coincides with a pick: take them in random order
            rest = np.setdiff1d(np.arange(len(points)), picks)
            picks.extend(int(i) for i in rng.permutation(rest)[:k - len(picks)])
            break
        pick = int(rng.choice(len(points), p=distance / total))
        picks.append(pick)
        distance = np.minimum(distance, np.maximum(squared_norms + squared_norms[pick] - 2.0 * points @ points[pick],
                                                   0.0))
        distance[pick] = 0.0
    return np.asarray(picks, dtype=np.int64)


def _fair_shares(sizes: list[int], budget: int) -> list[int]:
    """Split ``budget`` across groups as evenly as their sizes allow (a small group gives its spare share away)."""
    shares = [0] * len(sizes)
    left = budget
    while left > 0:
        open_groups = [i for i, size in enumerate(sizes) if shares[i] < size]
        if not open_groups:
            break
        each = max(1, left // len(open_groups))
        for i in open_groups:
            give = min(each, sizes[i] - shares[i], left)
            shares[i] += give
            left -= give
            if left == 0:
                break
    return shares
