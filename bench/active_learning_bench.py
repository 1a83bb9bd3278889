"""Simulated labelling: how accuracy grows with labels for each selection strategy, against random sampling.

A run starts from the label names (round 0: no labels), then adds ``--per-class`` labels per class per round (the
simulated annotator reads the true labels of the rows chosen), training with textclf's automatic recipe after every
round and scoring the test split; the TF-IDF baseline is trained on the same labels beside it. Every strategy,
random included, takes its first batch by ``textclf select``'s round-0 rule (the row most like each label name,
then a random sample), the same batch for a seed, so the curves part only where the strategies do.

Pools: the first ``--pool-size`` training rows of TREC, the AG News subset and SST-2, and ``trec_imbalanced``: TREC
with its LOC rows cut to 1 for every 20 of its largest class (the test split as it is, so LOC's F1 says how well the
minority class is found).

    python -m bench.active_learning_bench                                  # writes bench/results/active-learning.json
    python -m bench.active_learning_bench --datasets trec --strategies random,badge --seeds 0 --rounds 3

Runs already in the results file are kept and not repeated, so the benchmark resumes where it stopped.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.resumable import DATA, ROOT, load_runs, resumable_parser, save_runs, shared_data_missing
from bench.startup_bench import cpu_model

# The label names a team would write down; a description where the data set's names are codes.
NAMES = {
    "trec": [("ABBR", "abbreviation"), ("DESC", "description"), ("ENTY", "entity"), ("HUM", "human"),
             ("LOC", "location"), ("NUM", "number")],
    "ag_news_subset": [("World", "world news, politics"), ("Sports", "sports"), ("Business", "business, economy"),
                       ("Sci/Tech", "science and technology")],
    "sst2": [("negative", "negative, bad"), ("positive", "positive, good")],
}
NAMES["trec_imbalanced"] = NAMES["trec"]
MINORITY = {"trec_imbalanced": ("LOC", 20)}  # the class cut, and the ratio of the largest class to it


def pool_rows(dataset: str, pool_size: int | None) -> tuple[list[str], list[str]]:
    """The pool's texts and their true labels (which only the simulated annotator reads)."""
    from collections import Counter

    from textclf.data.readers import read_split

    train = read_split(DATA / dataset.removesuffix("_imbalanced") / "train.csv", "train")
    texts, labels = train.texts, train.labels
    if dataset in MINORITY:
        minority, ratio = MINORITY[dataset]
        minority_rows = [i for i, y in enumerate(labels) if y == minority]
        dropped = set(minority_rows[max(Counter(labels).values()) // ratio:])
        kept = [i for i in range(len(labels)) if i not in dropped]
        texts, labels = [texts[i] for i in kept], [labels[i] for i in kept]
    return texts[:pool_size], labels[:pool_size]


def write_pool(dataset: str, pool_size: int | None, work: Path) -> Path:
    """The pool as ``textclf select`` reads it: a text column only."""
    pool = work / f"{dataset}-pool.csv"
    if not pool.is_file():
        texts, _ = pool_rows(dataset, pool_size)
        pool.write_text("text\n" + "".join(_csv_field(t) + "\n" for t in texts), encoding="utf-8")
    return pool


def simulate(dataset: str, strategy: str, seed: int, rounds: int, per_class: int, pool_size: int | None,
             work: Path) -> dict:
    import textclf
    from textclf.data.label_names import LabelNames
    from textclf.data.readers import DatasetSplits, Split, read_split
    from textclf.tools.baseline import TfidfBaseline
    from textclf.tools.select import select_rows

    test = read_split(DATA / dataset.removesuffix("_imbalanced") / "test.csv", "test")
    truth = dict(zip(*pool_rows(dataset, pool_size)))
    names = LabelNames.from_list([n for n, _ in NAMES[dataset]], [d for _, d in NAMES[dataset]])
    pool = write_pool(dataset, pool_size, work)
    budget = per_class * len(names.names)
    chosen: list[str] = []
    model, curve = "minilm", []
    for round_ in range(rounds):
        labelled = work / f"{dataset}-{strategy}-{seed}-labelled.csv"
        labelled.write_text("text,label\n" + "".join(f"{_csv_field(t)},{_csv_field(truth[t])}\n" for t in chosen),
                            encoding="utf-8")
        # Round 0: the same first batch for every strategy, from the names (bench/first_batch_bench.py measures it).
        first = model == "minilm"
        start = time.perf_counter()
        selection = select_rows(model, pool, budget, strategy=None if first else strategy, seed=seed,
                                labelled=[labelled] if chosen else [], label_names=names if first else None,
                                cache_dir=work / "cache")
        select_seconds = time.perf_counter() - start
        chosen += selection.texts
        data = DatasetSplits(Split("train", list(chosen), [truth[t] for t in chosen], str(pool)), None, test,
                             names.label_map)
        out = work / f"{dataset}-{strategy}-{seed}-round{round_ + 1}"
        start = time.perf_counter()
        trainer = textclf.Trainer("minilm", data, out, textclf.TrainConfig(seed=seed), overwrite=True, progress=False)
        trainer.fit()
        report = trainer.evaluate(test)
        train_seconds = time.perf_counter() - start
        per_label = {name: scores["f1"] for name, scores in report.to_dict()["per_class"].items()}
        tfidf = TfidfBaseline().fit(chosen, [truth[t] for t in chosen], names.label_map).evaluate(test.texts,
                                                                                                   test.labels)
        curve.append({"labels": len(chosen), "accuracy": report.accuracy, "macro_f1": report.macro_f1,
                      "f1_per_label": per_label, "tfidf_accuracy": tfidf.accuracy, "tfidf_macro_f1": tfidf.macro_f1,
                      "recipe": trainer.config.recipe, "train_seconds": train_seconds,
                      "select_seconds": select_seconds})
        print(f"{dataset} {strategy} seed {seed} round {round_ + 1}: {len(chosen)} labels, accuracy "
              f"{report.accuracy:.4f}, macro F1 {report.macro_f1:.4f} ({trainer.config.recipe}; TF-IDF "
              f"{tfidf.accuracy:.4f})", flush=True)
        model = str(out / "last")
    return {"dataset": dataset, "strategy": strategy, "seed": seed, "per_class": per_class, "curve": curve}


# ================================================================================================ what it shows

def mean_curves(runs: list[dict], dataset: str) -> dict[str, list[dict]]:
    """Per strategy, the curve averaged over the seeds every strategy ran (paired: the same first batches):
    ``labels`` and the mean of each score (``accuracy``, ``macro_f1``, ``tfidf_accuracy``, ``minority_f1``)."""
    minority = MINORITY.get(dataset, (None,))[0]
    curves = {}
    named = dict.fromkeys(r["strategy"] for r in runs if r["dataset"] == dataset)
    seeds = set.intersection(*({r["seed"] for r in runs if (r["dataset"], r["strategy"]) == (dataset, strategy)}
                               for strategy in named)) if named else set()
    for strategy in sorted(named, key=lambda name: (name != "random", name)):  # random first, the baseline
        mine = [r["curve"] for r in runs
                if (r["dataset"], r["strategy"]) == (dataset, strategy) and r["seed"] in seeds]
        rounds = min(len(c) for c in mine)
        curves[strategy] = [{"labels": mine[0][i]["labels"], "seeds": len(mine),
                             **{key: statistics.mean(c[i][key] for c in mine)
                                for key in ("accuracy", "macro_f1", "tfidf_accuracy")},
                             **({"minority_f1": statistics.mean(c[i]["f1_per_label"][minority] for c in mine)}
                                if minority else {})} for i in range(rounds)]
    return curves


def verdicts(curves: dict[str, list[dict]]) -> dict[str, dict]:
    """Per strategy against random sampling: the share of random's labels it needs to reach random's final
    accuracy (None: never within these rounds), and its worst gap to random at any round (negative: below)."""
    random_curve = curves["random"]
    final = random_curve[-1]
    out = {}
    for strategy, curve in curves.items():
        reached = next((p["labels"] for p in curve if p["accuracy"] >= final["accuracy"]), None)
        out[strategy] = {"share_of_labels": None if reached is None else reached / final["labels"],
                         "worst_gap": min(p["accuracy"] - q["accuracy"] for p, q in zip(curve, random_curve))}
    return out


def table(runs: list[dict]) -> str:
    """Markdown: mean test accuracy (macro-F1) per round and strategy, the TF-IDF baseline on random's labels, and
    each strategy's verdict against random (docs/small-data.md)."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        curves = mean_curves(runs, dataset)
        if "random" not in curves:
            continue
        strategies = list(curves)
        minority = MINORITY.get(dataset, (None,))[0]
        seeds = min(p["seeds"] for c in curves.values() for p in c)
        lines += [f"**{dataset}** (mean of {seeds} seed{'s' if seeds > 1 else ''}; accuracy (macro-F1)"
                  + (f", then {minority}'s F1" if minority else "") + ")", "",
                  "| labels | " + " | ".join(strategies) + " | TF-IDF on random's labels |",
                  "|---" * (len(strategies) + 2) + "|"]
        for i, point in enumerate(curves["random"]):
            cells = []
            for strategy in strategies:
                p = curves[strategy][i] if i < len(curves[strategy]) else None
                cells.append("" if p is None else f"{p['accuracy']:.3f} ({p['macro_f1']:.3f})"
                             + (f", {p['minority_f1']:.3f}" if minority else ""))
            lines.append(f"| {point['labels']} | " + " | ".join(cells) + f" | {point['tfidf_accuracy']:.3f} |")
        lines.append("| reaches random's last accuracy with | " + " | ".join(
            "-" if v["share_of_labels"] is None else f"{v['share_of_labels']:.0%} of its labels"
            for v in verdicts(curves).values()) + " | |")
        lines.append("| worst gap to random at any round | " + " | ".join(
            f"{v['worst_gap']:+.3f}" for v in verdicts(curves).values()) + " | |")
        lines.append("")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    """Accuracy against labels, a line per strategy and a panel per pool, the TF-IDF baseline dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in dict.fromkeys(r["dataset"] for r in runs) if "random" in mean_curves(runs, d)]
    zero_shot = load_runs(ROOT / "bench" / "results" / "zero-shot.json")
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), dpi=110, squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        curves = mean_curves(runs, dataset)
        for strategy, curve in curves.items():
            axis.plot([p["labels"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=strategy)
        random_curve = curves["random"]
        axis.plot([p["labels"] for p in random_curve], [p["tfidf_accuracy"] for p in random_curve], ":", color="grey",
                  label="TF-IDF (random's labels)")
        names_only = [r["accuracy"] for r in zero_shot if (r["dataset"], r["system"]) == (dataset, "textclf")]
        if names_only:  # round 0's model, from the names alone (bench/zero_shot_bench.py)
            axis.plot([0], [statistics.mean(names_only)], "*", color="black", markersize=10, label="names only")
        axis.set(title=dataset, xlabel="labelled rows", ylabel="test accuracy")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "active-learning.json")
    parser.add_argument("--datasets", default="trec,sst2,trec_imbalanced,ag_news_subset")
    parser.add_argument("--strategies", default="random,badge,typical,margin")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of --per-class labels per class")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--pool-size", type=int, default=10_000, help="the first N training rows form the pool")
    parser.add_argument("--plot", default=str(Path(__file__).resolve().parent.parent / "docs" / "img"
                                              / "active-learning.png"), help="the learning curves ('' for none)")
    parser.add_argument("--report-only", action="store_true", help="print the table and plot from the results file")
    args = parser.parse_args(argv)
    if args.report_only:
        return report(load_runs(Path(args.out)), args.plot)
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
    return report(runs, args.plot)


def report(runs: list[dict], plot_path: str) -> int:
    print(table(runs))
    if plot_path and runs:
        plot(runs, Path(plot_path))
        print(f"wrote {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
