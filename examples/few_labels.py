"""A few labelled rows per class: let textclf choose the recipe, then compare it with the TF-IDF baseline.

Draws ``--per-class`` rows of every class from a training file (TREC by default: 8 questions of each of 6
types), trains with ``recipe="auto"`` (for the bundled sentence encoder ``minilm`` that is contrastive few-shot
training), and scores it and the TF-IDF baseline on the full test file. ``--lr-find`` first runs the
learning-rate range test and prints its suggestion.

    python examples/few_labels.py                               # 8 rows per class of TREC
    python examples/few_labels.py --per-class 16 --lr-find
    textclf train --data train8.csv --test examples/data/trec/test.csv --recipe auto --output runs/few  # the same
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import textclf
from textclf.tools.baseline import TfidfBaseline

ROOT = Path(__file__).resolve().parent.parent


def draw(split: textclf.Split, per_class: int, seed: int) -> textclf.Split:
    """``per_class`` rows of every label, drawn with ``seed`` (all rows of a class that has fewer)."""
    rng = random.Random(seed)
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(split.labels):
        rows.setdefault(label, []).append(i)
    chosen = sorted(i for members in rows.values() for i in rng.sample(members, min(per_class, len(members))))
    return split.subset(chosen)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "trec"),
                        help="folder with train and test files (default: the bundled TREC)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-find", action="store_true", help="run the learning-rate range test first")
    parser.add_argument("--output", default="runs/few-labels")
    parser.add_argument("--max-steps", type=int, help="cap the optimizer steps (quick checks)")
    args = parser.parse_args(argv)

    full = textclf.load_dataset(args.data)
    train = draw(full.train, args.per_class, args.seed)
    data = textclf.data.readers.DatasetSplits(train, None, full.test, full.label_map)
    print(f"{len(train)} training rows ({args.per_class} per class of {len(full.label_map)}), "
          f"{len(full.test)} test rows")
    config = textclf.TrainConfig(recipe="auto", seed=args.seed, max_steps=args.max_steps)
    trainer = textclf.Trainer(args.model, data, args.output, config, overwrite=True)  # prints what auto chose
    if args.lr_find:
        print(trainer.find_lr(output_dir=Path(args.output + "-lr")).summary())
    result = trainer.fit()
    baseline = TfidfBaseline().fit(train.texts, train.labels).evaluate(full.test.texts, full.test.labels)
    print(f"test accuracy: textclf {trainer.config.recipe} {result.test['accuracy']:.3f}, "
          f"TF-IDF baseline {baseline.accuracy:.3f}")
    return {"recipe": trainer.config.recipe, "accuracy": result.test["accuracy"], "baseline": baseline.accuracy}


if __name__ == "__main__":
    main()
