"""From label names alone: textclf's zero-shot start against SetFit's zero-shot recipe, on the same body.

No labelled row is used for training; each system sees the label names of bench/active_learning_bench.py (with a
description where the data set's names are codes) and, for textclf, the unlabelled pool (the first ``--pool-size``
training texts, labels dropped). Systems, all over the bundled all-MiniLM-L6-v2:

* ``textclf``     -- ``textclf train --label-names``: templated sentences plus the pool rows the names describe best,
  then the automatic recipe (textclf.tools.zero_shot);
* ``templates``   -- the same with templated sentences only (``per_label=0``): what the pool's rows add;
* ``similarity``  -- no training: each test text goes to the label whose templated sentences it is most like;
* ``setfit``      -- the peer as its documentation does it: ``get_templated_dataset(candidate_labels=...,
  sample_size=8)`` ("This sentence is {}"), ``TrainingArguments(batch_size=32, num_epochs=1)``, the same phrases
  as candidate labels.

    python -m bench.zero_shot_bench                        # writes bench/results/zero-shot.json
    python -m bench.zero_shot_bench --datasets trec --seeds 0 --systems textclf,setfit

Runs already in the results file are kept and not repeated.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.active_learning_bench import NAMES, write_pool
from bench.resumable import DATA, load_runs, resumable_parser, save_runs, shared_data_missing
from bench.startup_bench import cpu_model

SYSTEMS = ("textclf", "templates", "similarity", "setfit")


def label_names(dataset: str):
    from textclf.data.label_names import LabelNames

    return LabelNames.from_list([n for n, _ in NAMES[dataset]], [d for _, d in NAMES[dataset]])


def scores(gold: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": accuracy_score(gold, predicted), "macro_f1": f1_score(gold, predicted, average="macro")}


def run_textclf(dataset: str, pool: Path, test: Path, seed: int, per_label: int | None, work: Path) -> dict:
    import textclf
    from textclf.tools.zero_shot import POOL_ROWS_PER_LABEL, dataset_from_label_names

    per_label = POOL_ROWS_PER_LABEL if per_label is None else per_label
    data = dataset_from_label_names(pool, label_names(dataset), "minilm", test=test, per_label=per_label,
                                    say=lambda _: None)
    trainer = textclf.Trainer("minilm", data, work, textclf.TrainConfig(seed=seed), overwrite=True, progress=False)
    result = trainer.fit()
    return {"accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
            "train_rows": len(data.train.texts)}


def run_similarity(dataset: str, test_texts: list[str], test_labels: list[str]) -> dict:
    from textclf.tools.select import embed_phrases
    from textclf.tools.zero_shot import templated_rows

    names = label_names(dataset)
    phrases, _ = templated_rows(names, chinese=False)
    prototypes = embed_phrases("minilm", phrases).reshape(len(names.names), -1, 384).mean(axis=1)
    similarity = embed_phrases("minilm", test_texts) @ prototypes.T
    return scores(test_labels, [names.names[i] for i in similarity.argmax(axis=1)])


def run_setfit(dataset: str, test_texts: list[str], test_labels: list[str], seed: int, work: Path) -> dict:
    from setfit import SetFitModel, Trainer, TrainingArguments, get_templated_dataset

    from bench.few_shot_bench import minilm_dir

    names = label_names(dataset)
    candidates = [names.phrase(i) for i in range(len(names.names))]
    train = get_templated_dataset(candidate_labels=candidates, sample_size=8)
    model = SetFitModel.from_pretrained(minilm_dir())
    args = TrainingArguments(output_dir=str(work), batch_size=32, num_epochs=1, seed=seed, report_to="none")
    Trainer(model=model, args=args, train_dataset=train).train()
    predicted = [names.names[int(p)] for p in model.predict(test_texts, batch_size=128)]
    return {**scores(test_labels, predicted), "train_rows": len(train)}


def run_one(system: str, dataset: str, seed: int, pool: Path, work: Path) -> dict:
    from textclf.data.readers import read_split

    test_file = DATA / dataset / "test.csv"
    test = read_split(test_file, "test")
    start = time.perf_counter()
    if system in ("textclf", "templates"):
        result = run_textclf(dataset, pool, test_file, seed, 0 if system == "templates" else None, work)
    elif system == "similarity":
        result = run_similarity(dataset, test.texts, test.labels)
    else:
        result = run_setfit(dataset, test.texts, test.labels, seed, work.parent / "setfit")  # its own checkpoints
    return {"dataset": dataset, "system": system, "seed": seed, **result,
            "seconds": round(time.perf_counter() - start, 1)}


def table(runs: list[dict]) -> str:
    """Mean test accuracy (and macro-F1) per data set and system, as in docs/small-data.md."""
    datasets = sorted({r["dataset"] for r in runs})
    lines = ["| data set | " + " | ".join(SYSTEMS) + " |", "|---" * (len(SYSTEMS) + 1) + "|"]
    for dataset in datasets:
        cells = []
        for system in SYSTEMS:
            mine = [r for r in runs if (r["dataset"], r["system"]) == (dataset, system)]
            cells.append(f"{statistics.mean(r['accuracy'] for r in mine):.3f} "
                         f"({statistics.mean(r['macro_f1'] for r in mine):.3f}), "
                         f"{len(mine)} seed{'s' if len(mine) > 1 else ''}" if mine else "")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "zero-shot.json")
    parser.add_argument("--datasets", default="trec,ag_news_subset,sst2")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool-size", type=int, default=10_000, help="the first N training texts form the pool")
    args = parser.parse_args(argv)
    if shared_data_missing():
        return 0
    out = Path(args.out)
    runs = load_runs(out)
    with tempfile.TemporaryDirectory(prefix="textclf-zero-shot-") as tmp:
        for dataset in args.datasets.split(","):
            pool = write_pool(dataset, args.pool_size, Path(tmp))
            for seed in (int(s) for s in args.seeds.split(",")):
                for system in args.systems.split(","):
                    if system == "similarity" and seed != 0:
                        continue  # no training, nothing random
                    if any((r["dataset"], r["system"], r["seed"]) == (dataset, system, seed) for r in runs):
                        continue
                    run = run_one(system, dataset, seed, pool, Path(tmp) / "run")
                    print(f"{dataset} {system} seed {seed}: accuracy {run['accuracy']:.4f}, macro F1 "
                          f"{run['macro_f1']:.4f} ({run['seconds']} s)", flush=True)
                    runs.append(run)
                    save_runs(out, runs)
    print(table(runs))
    print(f"wrote {out} ({cpu_model()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
