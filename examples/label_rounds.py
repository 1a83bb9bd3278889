"""From label names to a classifier, one round of labels at a time, with a simulated annotator.

The start most teams have: the names of the labels and a pile of unlabelled texts. Round 0 chooses a first batch
(the row most like each name, then a random sample of the pool); the "annotator" (here: the data set's true labels)
labels it; textclf trains on what is labelled (the automatic recipe); ``select`` chooses the next batch from what the
model is unsure of; and so on. The learning curve (test accuracy after each round) is printed at the end, beside
the accuracy of a model trained from the names alone.

    python examples/label_rounds.py                                     # TREC, 3 rounds of 8 labels per class
    python examples/label_rounds.py --rounds 5 --strategy margin

The same rounds from the command line::

    textclf select --model minilm --pool pool.csv --label-names labels.txt --budget 48 --output round0.csv
    textclf train --data round0.csv --test test.csv --output runs/round1
    textclf select --model runs/round1 --pool pool.csv --labelled round0.csv --budget 48 --output round1.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import textclf
from textclf.data.label_names import LabelNames, read_label_names
from textclf.data.readers import DatasetSplits, Split, read_split
from textclf.tools.select import select_rows
from textclf.tools.zero_shot import dataset_from_label_names

ROOT = Path(__file__).resolve().parent.parent
# What a team would write down for TREC's question types: the codes, with a word that says what each means.
TREC_NAMES = [("ABBR", "abbreviation"), ("DESC", "description"), ("ENTY", "entity"), ("HUM", "human"),
              ("LOC", "location"), ("NUM", "number")]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "trec"), help="folder with train.csv "
                        "(the pool; its labels play the annotator) and test.csv")
    parser.add_argument("--names", help="label-names file (default: TREC's names with a word each)")
    parser.add_argument("--model", default="minilm", help="a sentence encoder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=8, help="labels per class per round")
    parser.add_argument("--strategy", default=None, help="selection strategy (default: textclf select's)")
    parser.add_argument("--output", default="runs/label-rounds")
    parser.add_argument("--max-steps", type=int, default=None, help="cap each training (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data, out = Path(args.data), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    pool, test = data / "train.csv", read_split(data / "test.csv", "test")
    truth = dict(zip(*_rows(read_split(pool, "train"))))
    if args.names:
        names = read_label_names(args.names)
    else:
        names = LabelNames.from_list([n for n, _ in TREC_NAMES], [d for _, d in TREC_NAMES])
    config = textclf.TrainConfig(seed=args.seed, max_steps=args.max_steps)

    # From the names alone: no labels at all
    zero_shot = dataset_from_label_names(pool, names, args.model, test=test)
    trainer = textclf.Trainer(args.model, zero_shot, out / "names-only", config, overwrite=True, progress=False)
    trainer.fit()
    curve = [{"labels": 0, "accuracy": trainer.evaluate(test).accuracy}]

    budget, labelled_files, chosen, model = args.per_class * len(names.names), [], [], args.model
    for round_ in range(args.rounds):
        batch = out / f"round{round_}.csv"
        selection = select_rows(model, pool, budget, batch, strategy=args.strategy if round_ else None,
                                seed=args.seed, labelled=labelled_files,
                                label_names=names if round_ == 0 else None)
        chosen += selection.texts  # the annotator labels the batch
        labelled_files.append(batch)
        rows = Split("train", list(chosen), [truth[t] for t in chosen], "annotated rounds")
        run = out / f"round{round_ + 1}"
        trainer = textclf.Trainer(args.model, DatasetSplits(rows, None, test, names.label_map), run, config,
                                  overwrite=True, progress=False)
        trainer.fit()
        curve.append({"labels": len(chosen), "accuracy": trainer.evaluate(test).accuracy,
                      "strategy": selection.strategy})
        model = str(run / "last")

    print(f"{'labels':>7} {'test accuracy':>14}  how the rows were chosen")
    for point in curve:
        print(f"{point['labels']:>7} {point['accuracy']:>14.4f}  {point.get('strategy', 'label names only')}")
    return curve


def _rows(split: Split):
    return split.texts, split.labels


if __name__ == "__main__":
    main()
