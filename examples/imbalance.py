"""Class imbalance: balanced class weights, a class-balanced sampler and focal loss, from the config.

Builds an imbalanced training set from TREC (the largest class keeps all its rows, the smallest keeps
1/``--imbalance`` of them, the others in between on a geometric scale), keeps dev and test as they are, and
trains with the same recipe several times, changing one ``TrainConfig`` field per run:

* ``plain``    -- cross-entropy;
* ``weighted`` -- ``class_weights="balanced"`` (each row's loss times ``n / (C * count)`` of its class);
* ``sampler``  -- ``sampler="balanced"`` (rows drawn so every class is about equally frequent);
* ``focal``    -- ``focal_gamma=2`` with balanced class weights as alpha.

Rare classes are where these help, so compare macro-F1 (the default selection metric), not accuracy. The same
options are command-line flags: ``textclf train ... --class-weights balanced --sampler balanced``. To write a loss
of your own instead, override ``Trainer.compute_loss`` (see ``examples/custom_head.py``).

    python examples/imbalance.py                              # plain, weighted, sampler on MiniLM
    python examples/imbalance.py --runs plain,weighted,sampler,focal
    python examples/imbalance.py --data tests/data/tiny --max-steps 10
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from collections import Counter
from pathlib import Path

import torch

import textclf

ROOT = Path(__file__).resolve().parent.parent

# One TrainConfig change per run, everything else equal.
RUNS = {"plain": {}, "weighted": {"class_weights": "balanced"}, "sampler": {"sampler": "balanced"},
        "focal": {"focal_gamma": 2.0, "class_weights": "balanced"}}


def inverse_frequency_weights(labels: list[str], label_map: textclf.LabelMap) -> torch.Tensor:
    """``n / (C * count_c)`` per class: what ``class_weights="balanced"`` computes (shown before training)."""
    counts = Counter(labels)
    total, num_classes = len(labels), len(label_map)
    return torch.tensor([total / (num_classes * counts[name]) for name in label_map.names], dtype=torch.float32)


def make_imbalanced(train: textclf.Split, imbalance: float, seed: int = 0) -> textclf.Split:
    """Subsample ``train`` so class sizes fall geometrically from 100% (largest class) to 1/imbalance (smallest)."""
    rng = random.Random(seed)
    rows_by_class: dict[str, list[int]] = {}
    for i, label in enumerate(train.labels):
        rows_by_class.setdefault(label, []).append(i)
    order = sorted(rows_by_class, key=lambda name: (-len(rows_by_class[name]), name))
    keep = []
    for rank, name in enumerate(order):
        fraction = imbalance ** (-rank / max(1, len(order) - 1))
        rows = rows_by_class[name]
        keep += rng.sample(rows, max(2, round(fraction * len(rows))))
    return train.subset(sorted(keep))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "trec"), help="data folder or file")
    parser.add_argument("--model", default="minilm", help="hub name, local folder or alias (default minilm)")
    parser.add_argument("--output", default="runs/imbalance", help="parent of the runs' output folders")
    parser.add_argument("--imbalance", type=float, default=20.0, help="largest / smallest class size ratio")
    parser.add_argument("--runs", default="plain,weighted,sampler", help=f"comma-separated, from {list(RUNS)}")
    parser.add_argument("--results", default=None, help="write the figures (and CPU/wall times) to this JSON file")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    args = parser.parse_args(argv)
    unknown = set(args.runs.split(",")) - set(RUNS)
    if unknown:
        parser.error(f"--runs: unknown run(s) {sorted(unknown)}; choose from {list(RUNS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, textclf.EvalReport]:
    args = parse_args(argv)
    full = textclf.load_dataset(args.data)
    train = make_imbalanced(full.train, args.imbalance)
    data = textclf.DatasetSplits(train=train, dev=full.dev, test=full.test, label_map=full.label_map)
    counts = Counter(train.labels)
    print(f"imbalanced training set: {len(full.train)} -> {len(train)} rows; "
          + ", ".join(f"{name} {counts[name]}" for name in data.label_map.names))
    weights = inverse_frequency_weights(train.labels, data.label_map)
    print("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(data.label_map.names, weights.tolist())))

    reports, timings = {}, {}
    for name in args.runs.split(","):
        config = textclf.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                     max_length=args.max_length, max_steps=args.max_steps, **RUNS[name])
        wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        trainer = textclf.Trainer(model=args.model, data=data, output_dir=Path(args.output) / name, config=config,
                                  overwrite=True)
        trainer.fit()
        reports[name] = trainer.evaluate(data.test)
        after = resource.getrusage(resource.RUSAGE_SELF)
        timings[name] = {"wall_seconds": round(time.perf_counter() - wall, 1),
                         "cpu_seconds": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, 1)}
        print(f"\n== {name}: test ({reports[name].num_rows} rows) ==\n{reports[name].format()}")

    header = "  ".join(f"{n:>6}" for n in data.label_map.names)
    print(f"\nrun        accuracy  macro-F1  {header}  (per-class F1)")
    for name, report in reports.items():
        per_class = "  ".join(f"{report.per_class[n].f1:>6.3f}" for n in data.label_map.names)
        print(f"{name:<10} {report.accuracy:>8.4f}  {report.macro_f1:>8.4f}  {per_class}")
    if args.results:
        Path(args.results).write_text(json.dumps({
            "data": args.data, "model": args.model, "imbalance": args.imbalance, "train_counts": dict(counts),
            "hyper": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                      "max_length": args.max_length, "max_steps": args.max_steps},
            "runs": {name: {"config": RUNS[name], "test_accuracy": round(r.accuracy, 4),
                            "test_macro_f1": round(r.macro_f1, 4), **timings[name],
                            "per_class_f1": {n: round(r.per_class[n].f1, 4) for n in data.label_map.names}}
                     for name, r in reports.items()},
            "note": "CPU shared with other jobs while measured"}, indent=2) + "\n", encoding="utf-8")
    return reports


if __name__ == "__main__":
    main()
