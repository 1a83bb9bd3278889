"""Round 0 without a model: which first batch trains best. Each rule picks 8 rows per class's worth from the pool
(the first 10,000 training rows) using only the untrained minilm's embeddings and the label names; the simulated
annotator labels them, textclf's automatic recipe trains on them, and the test split scores the result.

Rules:

* ``names + random`` -- ``textclf select``'s round 0 (strategies.first_batch): the row most like each name, then a
  uniform random sample;
* ``random``         -- a uniform random sample;
* ``names, k-centre`` -- the budget shared equally across the names (each pool row goes to its nearest name), each
  name's share by greedy k-centre from the row most like it (the rule textclf started with);
* ``names, typical`` -- the same shares, each taken as the typical rows of as many k-means clusters of the name's rows;
* ``typical``        -- TypiClust over the whole pool.

    python -m bench.first_batch_bench                       # TREC and SST-2, seeds 0-2
    python -m bench.first_batch_bench --datasets sst2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.active_learning_bench import NAMES, pool_rows
from bench.resumable import DATA, shared_data_missing
from bench.startup_bench import cpu_model


def per_name(embeddings, names, budget, rng, take) -> np.ndarray:
    """Shares of ``budget`` across the names' nearest rows, each share chosen by ``take(rows, share, rng)``."""
    nearest = (embeddings @ names.T).argmax(axis=1)
    groups = [np.flatnonzero(nearest == c) for c in range(len(names))]
    shares = [0] * len(groups)
    for _ in range(budget):  # one at a time to the name with the smallest share that still has rows
        open_groups = [c for c in range(len(groups)) if shares[c] < len(groups[c])]
        shares[min(open_groups, key=lambda c: shares[c])] += 1
    return np.concatenate([take(group, c, share, rng) for c, (group, share) in enumerate(zip(groups, shares))
                           if share])


def rules(embeddings: np.ndarray, names: np.ndarray, budget: int, seed: int) -> dict[str, np.ndarray]:
    from textclf.tools import strategies

    none = np.zeros(0, dtype=np.int64)

    def k_centre(group, c, share, rng):
        start = group[np.argmax(embeddings[group] @ names[c])]
        rest = group[group != start]
        return np.concatenate([[start], rest[strategies._k_centre(embeddings[rest], embeddings[[start]], share - 1,
                                                                  rng)]])

    def typical(group, c, share, rng):
        return group[strategies._typical(embeddings, group, none, share, rng)]

    everything = np.arange(len(embeddings))
    rng = np.random.default_rng
    return {"names + random": strategies.first_batch(embeddings, budget, seed, names),
            "random": rng(seed).permutation(everything)[:budget],
            "names, k-centre": per_name(embeddings, names, budget, rng(seed), k_centre),
            "names, typical": per_name(embeddings, names, budget, rng(seed), typical),
            "typical": everything[strategies._typical(embeddings, everything, none, budget, rng(seed))]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="trec,sst2")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    if shared_data_missing():
        return 0
    import textclf
    from textclf.data.label_names import LabelNames
    from textclf.data.readers import DatasetSplits, Split, read_split
    from textclf.tools.select import embed_phrases, score_pool

    results = {}
    with tempfile.TemporaryDirectory(prefix="textclf-first-batch-") as work:
        for dataset in args.datasets.split(","):
            texts, labels = pool_rows(dataset, 10_000)
            test = read_split(DATA / dataset / "test.csv", "test")
            names = LabelNames.from_list([n for n, _ in NAMES[dataset]], [d for _, d in NAMES[dataset]])
            embeddings = score_pool("minilm", texts, cache_dir=Path(work) / "cache").embeddings
            name_embeddings = embed_phrases("minilm", [names.phrase(i) for i in range(len(names.names))])
            for seed in (int(s) for s in args.seeds.split(",")):
                for rule, rows in rules(embeddings, name_embeddings, 8 * len(names.names), seed).items():
                    data = DatasetSplits(Split("train", [texts[i] for i in rows], [labels[i] for i in rows], "pool"),
                                         None, test, names.label_map)
                    trainer = textclf.Trainer("minilm", data, Path(work) / "run", textclf.TrainConfig(seed=seed),
                                              overwrite=True, progress=False)
                    trainer.fit()
                    accuracy = trainer.evaluate(test).accuracy
                    results.setdefault(dataset, {}).setdefault(rule, []).append(accuracy)
                    print(f"{dataset} {rule} seed {seed}: {accuracy:.4f}", flush=True)
    print(json.dumps({"cpu": cpu_model(), "accuracy": results,
                      "mean": {d: {r: round(statistics.mean(v), 4) for r, v in by.items()}
                               for d, by in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
