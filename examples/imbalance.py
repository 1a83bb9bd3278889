"""Class imbalance: a class-weighted loss through the ``Trainer.compute_loss`` override point.

Builds an imbalanced training set from TREC (the largest class keeps all its rows, the smallest keeps
1/``--imbalance`` of them, the others in between on a geometric scale), keeps dev and test as they are, and
trains twice with the same recipe: once with plain cross-entropy and once with cross-entropy weighted by inverse
class frequency. Rare classes are where the weighted loss helps, so compare macro-F1 (the default selection
metric), not accuracy.

    python examples/imbalance.py                       # both runs on MiniLM (a few minutes each on a CPU)
    python examples/imbalance.py --no-baseline         # only the weighted run
    python examples/imbalance.py --data tests/data/tiny --max-steps 10
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import textclf

ROOT = Path(__file__).resolve().parent.parent


class WeightedLossTrainer(textclf.Trainer):
    """Cross-entropy with one weight per class (in label-id order), e.g. from :func:`inverse_frequency_weights`."""

    def __init__(self, *args, class_weights: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights.to(self.runtime.device)  # moved once, not per step

    def compute_loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # outputs: logits [B, C]; computed in fp32 like the default loss. Also used for the dev loss.
        return F.cross_entropy(outputs.float(), batch["labels"], weight=self.class_weights)


def inverse_frequency_weights(labels: list[str], label_map: textclf.LabelMap) -> torch.Tensor:
    """``n / (C * count_c)`` per class: 1 for every class when balanced, larger for rare classes."""
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
    parser.add_argument("--no-baseline", action="store_true", help="skip the unweighted run")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    return parser.parse_args(argv)


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

    config = textclf.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                 max_length=args.max_length, max_steps=args.max_steps)
    runs = {"weighted": (WeightedLossTrainer, {"class_weights": weights})}
    if not args.no_baseline:
        runs = {"plain": (textclf.Trainer, {}), **runs}
    reports = {}
    for name, (trainer_class, extra) in runs.items():
        trainer = trainer_class(model=args.model, data=data, output_dir=Path(args.output) / name, config=config,
                                overwrite=True, **extra)
        trainer.fit()
        reports[name] = trainer.evaluate(data.test)
        print(f"\n== {name} loss: test ({reports[name].num_rows} rows) ==\n{reports[name].format()}")

    header = "  ".join(f"{n:>6}" for n in data.label_map.names)
    print(f"\nrun        accuracy  macro-F1  {header}  (per-class F1)")
    for name, report in reports.items():
        per_class = "  ".join(f"{report.per_class[n].f1:>6.3f}" for n in data.label_map.names)
        print(f"{name:<10} {report.accuracy:>8.4f}  {report.macro_f1:>8.4f}  {per_class}")
    return reports


if __name__ == "__main__":
    main()
