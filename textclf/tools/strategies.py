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
* ``typical`` -- representativeness (TypiClust, Hacohen et al., 2022): k-means into as many clusters as labelled
  plus wanted rows; the largest clusters that hold no labelled row each give their most typical row (the one with
  the most similar near neighbours), so the batch covers the pool's dense regions, not its outliers. The authors
  find it beats uncertainty while labels are few (tens per class), the regime textclf's users start in.
* ``badge`` -- uncertainty and diversity at once (Ash et al., 2020): k-means++ seeding over each row's gradient
  embedding, ``(p - onehot(argmax p)) x embedding``; its length grows with the uncertainty, and the D^2 sampling
  spreads the picks, so a batch is uncertain without being redundant.

A round 0 without a trained model (:func:`first_batch`) is a random sample of the pool, opened by the row most like
each label name when names are given (measured against the alternatives in its docstring).
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


def typical_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(embeddings), labelled)
    return candidates[_typical(embeddings, candidates, labelled, budget, rng)]


def badge_rows(probabilities, embeddings, labelled, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = _unlabelled(len(embeddings), labelled)
    p = probabilities[candidates]
    residual = p.copy()
    residual[np.arange(len(p)), p.argmax(axis=1)] -= 1.0  # the gradient of the loss if the guess were the label
    # Each gradient embedding is the outer product residual x embedding, so inner products factor:
    # <r_i x e_i, r_j x e_j> = <r_i, r_j> <e_i, e_j>. The [N, C x H] vectors are never built (C x H wide: 2,304
    # floats a row for 6 classes and MiniLM), and a pick costs O(N (C + H)).
    vectors = np.asarray(embeddings[candidates], dtype=np.float64)

    def inner(pick: int) -> np.ndarray:
        return (residual @ residual[pick]) * (vectors @ vectors[pick])

    squared_norms = (residual * residual).sum(axis=1) * (vectors * vectors).sum(axis=1)
    return candidates[_k_means_pp(squared_norms, inner, budget, rng)]


STRATEGIES: dict[str, Callable] = {"random": random_rows, "margin": margin_rows, "entropy": entropy_rows,
                                   "kcenter": kcenter_rows, "typical": typical_rows, "badge": badge_rows}
ROUND_ZERO = ("typical", "kcenter", "random")  # the strategies that need no model's probabilities
DEFAULT_STRATEGY = "typical"  # measured: docs/small-data.md, "What the benchmarks show"


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
    """Round 0, before any model: a uniform random sample of the pool, opened, with label names, by the row most
    like each name.

    A random sample keeps the pool's class proportions, which the rules over an untrained encoder's embeddings did
    not: on TREC (48 rows, mean of 3 seeds) this batch trained to 0.825 test accuracy and a plain random one to 0.814,
    a batch shared equally across the names and taken by k-centre, or by typical rows, within each name's nearest
    rows to 0.731 and 0.769 (the encoder groups questions by topic, the labels by kind; docs/small-data.md). The row
    most like a name is most often of that class, so a rare class a random sample would miss is covered
    (``name_embeddings``: ``[C, H]``, the names' embeddings); they come first, in the names' order.
    """
    rng = np.random.default_rng(seed)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    candidates = _unlabelled(len(embeddings), np.asarray(sorted(set(int(i) for i in labelled)), dtype=np.int64))
    budget = min(budget, len(candidates))
    named = []
    if name_embeddings is not None and budget:
        similarity = embeddings[candidates] @ np.asarray(name_embeddings, dtype=np.float32).T
        named = list(dict.fromkeys(int(candidates[i]) for i in similarity.argmax(axis=0)))[:budget]
    rest = np.setdiff1d(candidates, named)
    return np.concatenate([np.asarray(named, dtype=np.int64), rng.permutation(rest)[:budget - len(named)]])


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


def _typical(embeddings: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, k: int,
             rng: np.random.Generator) -> np.ndarray:
    """TypiClust: ``k`` positions in ``candidates``, the most typical row of each of the largest clusters (k-means
    over candidates and labelled rows, ``len(labelled) + k`` clusters) that hold no labelled row, largest first; the
    most typical rows left fill the budget when fewer clusters are free."""
    from sklearn.cluster import KMeans

    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate([candidates, labelled])
    points = embeddings[rows]
    clusters = min(len(labelled) + k, len(rows))
    assigned = KMeans(clusters, n_init=1, random_state=int(rng.integers(2**31))).fit_predict(points)
    covered = set(assigned[len(candidates):].tolist())
    members = [np.flatnonzero(assigned[:len(candidates)] == cluster) for cluster in range(clusters)]
    typicality = np.zeros(len(candidates))
    for rows_of_cluster in members:
        if len(rows_of_cluster):
            typicality[rows_of_cluster] = _typicality(points[rows_of_cluster], rng)
    sizes = np.bincount(assigned, minlength=clusters)
    free = [c for c in np.argsort(-sizes, kind="stable") if c not in covered and sizes[c]]  # candidates only
    picks = [int(members[c][np.argmax(typicality[members[c]])]) for c in free[:k]]
    if len(picks) < k:  # more wanted than free clusters: the most typical rows not picked yet
        rest = np.setdiff1d(np.arange(len(candidates)), picks)
        picks.extend(int(i) for i in rest[np.argsort(-typicality[rest], kind="stable")][:k - len(picks)])
    return np.asarray(picks, dtype=np.int64)


def _typicality(points: np.ndarray, rng: np.random.Generator, neighbours: int = 20, most: int = 2000) -> np.ndarray:
    """How typical each point is within its cluster: the mean cosine similarity to its ``neighbours`` most similar
    points (TypiClust's inverse mean distance to the nearest neighbours), against at most ``most`` of them."""
    if len(points) == 1:
        return np.ones(1)
    reference = np.arange(len(points)) if len(points) <= most else rng.choice(len(points), most, replace=False)
    similarity = points @ points[reference].T
    similarity[reference, np.arange(len(reference))] = -np.inf  # a point is not its own neighbour
    n = min(neighbours, len(reference) - 1)
    return np.partition(similarity, len(reference) - n, axis=1)[:, -n:].mean(axis=1)


def _k_means_pp(squared_norms: np.ndarray, inner: Callable[[int], np.ndarray], k: int,
                rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding over points given by their squared norms and ``inner(i)`` (every point's inner product
    with point ``i``): the first pick is the longest vector, each next one drawn with probability proportional to
    its squared distance from the nearest pick."""
    k = min(k, len(squared_norms))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    squared_norms = np.asarray(squared_norms, dtype=np.float64)  # the draw's probabilities must sum to one

    def squared_distance(pick: int) -> np.ndarray:
        return np.maximum(squared_norms + squared_norms[pick] - 2.0 * inner(pick), 0.0)

    first = int(np.argmax(squared_norms))
    picks = [first]
    distance = squared_distance(first)
    distance[first] = 0.0
    for _ in range(k - 1):
        total = distance.sum()
        if total <= 0:  # every row left coincides with a pick: take them in random order
            rest = np.setdiff1d(np.arange(len(squared_norms)), picks)
            picks.extend(int(i) for i in rng.permutation(rest)[:k - len(picks)])
            break
        pick = int(rng.choice(len(squared_norms), p=distance / total))
        picks.append(pick)
        distance = np.minimum(distance, squared_distance(pick))
        distance[pick] = 0.0
    return np.asarray(picks, dtype=np.int64)
