"""Simulated labelling: how accuracy grows with labels for each selection strategy, against random sampling.

A run starts from the label names (round 0: no labels; the first batch is chosen by ``textclf select``'s round-0
rule), then adds ``--per-class`` labels per class per round (the simulated annotator reads the true labels of the
rows the strategy chose), training with textclf's automatic recipe after every round and scoring the test split.
Every strategy, including random, starts from the same round-0 batch for a seed.

    python -m bench.active_learning_bench                                  # writes bench/results/active-learning.json
    python -m bench.active_learning_bench --datasets trec --strategies random,badge --seeds 0 --rounds 3

Runs already in the results file are kept and not repeated, so the benchmark resumes where it stopped.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.resumable import DATA, load_runs, resumable_parser, save_runs, shared_data_missing
from bench.startup_bench import cpu_model

# The label names a team would write down; a description where the data set's names are codes.
NAMES = {
    "trec": [("ABBR", "abbreviation"), ("DESC", "description"), ("ENTY", "entity"), ("HUM", "human"),
             ("LOC", "location"), ("NUM", "number")],
    "ag_news_subset": [("World", "world news, politics"), ("Sports", "sports"), ("Business", "business, economy"),
                       ("Sci/Tech", "science and technology")],
    "sst2": [("negative", "negative, bad"), ("positive", "positive, good")],
}


def simulate(dataset: str, strategy: str, seed: int, rounds: int, per_class: int, pool_size: int | None,
             work: Path) -> dict:
    import textclf
    from textclf.data.label_names import LabelNames
    from textclf.data.readers import DatasetSplits, Split, read_split
    from textclf.tools.select import select_rows

    train = read_split(DATA / dataset / "train.csv", "train")
    test = read_split(DATA / dataset / "test.csv", "test")
    texts, labels = train.texts[:pool_size], train.labels[:pool_size]
    truth = dict(zip(texts, labels))
    names = LabelNames.from_list([n for n, _ in NAMES[dataset]], [d for _, d in NAMES[dataset]])
    pool = work / f"{dataset}-pool.csv"
    if not pool.is_file():
        pool.write_text("text\n" + "".join(_csv_field(t) + "\n" for t in texts), encoding="utf-8")
    budget = per_class * len(names.names)
    chosen: list[str] = []
    model, curve = "minilm", []
    for round_ in range(rounds):
        labelled = work / f"{dataset}-{strategy}-{seed}-labelled.csv"
        labelled.write_text("text,label\n" + "".join(f"{_csv_field(t)},{_csv_field(truth[t])}\n" for t in chosen),
                            encoding="utf-8")
        rule = None if model == "minilm" else strategy  # round 0: the same first batch for every strategy
        start = time.perf_counter()
        selection = select_rows(model, pool, budget, strategy=rule, seed=seed,
                                labelled=[labelled] if chosen else [],
                                label_names=names if model == "minilm" else None, cache_dir=work / "cache")
        select_seconds = time.perf_counter() - start
        chosen += selection.texts
        data = DatasetSplits(Split("train", list(chosen), [truth[t] for t in chosen], str(pool)), None, test,
                             names.label_map)
        out = work / f"{dataset}-{strategy}-{seed}-round{round_ + 1}"
        start = time.perf_counter()
        trainer = textclf.Trainer("minilm", data, out, textclf.TrainConfig(seed=seed), overwrite=True, progress=False)
        trainer.fit()
        report = trainer.evaluate(test)
        per_label = {name: scores["f1"] for name, scores in report.to_dict()["per_class"].items()}
        curve.append({"labels": len(chosen), "accuracy": report.accuracy, "macro_f1": report.macro_f1,
                      "f1_per_label": per_label, "train_seconds": time.perf_counter() - start,
                      "select_seconds": select_seconds})
        print(f"{dataset} {strategy} seed {seed} round {round_ + 1}: {len(chosen)} labels, accuracy "
              f"{report.accuracy:.4f}, macro F1 {report.macro_f1:.4f}", flush=True)
        model = str(out / "last")
    return {"dataset": dataset, "strategy": strategy, "seed": seed, "per_class": per_class, "curve": curve}


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "active-learning.json")
    parser.add_argument("--datasets", default="trec,ag_news_subset,sst2")
    parser.add_argument("--strategies", default="random,margin,kcenter,badge")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of --per-class labels per class")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=10_000, help="the first N training rows form the pool")
    args = parser.parse_args(argv)
    if shared_data_missing():
        return 0
    out = Path(args.out)
    runs = load_runs(out)
    with tempfile.TemporaryDirectory(prefix="textclf-al-") as tmp:
        for dataset in args.datasets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for strategy in args.strategies.split(","):
                    key = (dataset, strategy, seed, args.per_class)
                    if any((r["dataset"], r["strategy"], r["seed"], r["per_class"]) == key
                           and len(r["curve"]) >= args.rounds for r in runs):
                        continue
                    runs = [r for r in runs if (r["dataset"], r["strategy"], r["seed"], r["per_class"]) != key]
                    runs.append(simulate(dataset, strategy, seed, args.rounds, args.per_class, args.pool_size,
                                         Path(tmp)))
                    save_runs(out, runs)
    print(f"wrote {out} ({cpu_model()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
