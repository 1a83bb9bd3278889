"""Distillation with every labelled row: a 5-seed ensemble of ``minilm`` as the teacher, one 3-layer student.

Per data set (TREC, the AG News subset; their own train, dev and test splits):

* ``teacher``  -- ``textclf train --model minilm --seeds 0,1,2,3,4`` (the automatic recipe for each member), scored as
  the soft-voting ensemble (OUTPUT/ensemble);
* ``member``   -- each of those five models alone (their mean is "one teacher model");
* ``student control``   -- ``textclf distill --teacher OUTPUT/ensemble --student-layers 3 --alpha 0``: the first
  member cut to 3 of its 6 layers (textclf distill's default start), trained on the labels alone;
* ``student distilled`` -- the same with the default alpha and temperature.

No unlabelled pool: every training text is labelled, so the student learns the ensemble's probabilities on the rows
the teacher was trained on. The targets (docs/benchmarks.md, "Distillation"): the distilled student within 0.5
points of the ensemble, and at least as accurate as one teacher model.

    python -m bench.distill_full_bench                   # writes bench/results/distill-full.json
    python -m bench.distill_full_bench --datasets trec

Runs kept in the results file are not repeated.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.resumable import DATA, ROOT, load_runs, resumable_parser, save_runs, shared_data_missing
from bench.startup_bench import cpu_model

SEEDS = "0,1,2,3,4"  # the ensemble's members
LAYERS = "3"


def textclf(*args: str) -> float:
    command = [sys.executable, "-m", "textclf", *args, "--quiet", "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def test_scores(metrics_file: Path) -> dict:
    test = json.loads(metrics_file.read_text(encoding="utf-8"))["test"]
    return {"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"]}


def run_dataset(dataset: str, seeds: str, work: Path, runs: list[dict], save) -> None:
    folder = DATA / dataset
    splits = ["--dev", str(folder / "dev.csv"), "--test", str(folder / "test.csv")]
    teacher = work / dataset / "teacher"

    def have(model: str) -> bool:
        return any((r["dataset"], r["model"]) == (dataset, model) for r in runs)

    if not have("teacher"):
        seconds = textclf("train", "--data", str(folder / "train.csv"), *splits, "--model", "minilm", "--seeds", seeds,
                          "--output", str(teacher))
        runs.append({"dataset": dataset, "model": "teacher", **test_scores(teacher / "metrics.json"),
                     "seconds": round(seconds, 1)})
        for seed in seeds.split(","):
            runs.append({"dataset": dataset, "model": "member", "seed": int(seed),
                         **test_scores(teacher / f"seed-{seed}" / "metrics.json")})
        print(f"{dataset} teacher: {runs[-1 - len(seeds.split(','))]}", flush=True)
        save()
    for kind, extra in (("control", ["--alpha", "0"]), ("distilled", [])):
        name = f"student-{LAYERS}L {kind}"
        if have(name):
            continue
        out = work / dataset / name.replace(" ", "-")
        seconds = textclf("distill", "--teacher", str(teacher / "ensemble"), "--data", str(folder / "train.csv"),
                          *splits, "--student-layers", LAYERS, "--output", str(out), "--seed", "0", *extra)
        runs.append({"dataset": dataset, "model": name, **test_scores(out / "metrics.json"),
                     "seconds": round(seconds, 1)})
        print(f"{dataset} {name}: {runs[-1]}", flush=True)
        save()


def summarise(runs: list[dict]) -> dict:
    """Per data set: the ensemble, the mean member, both students, and the distilled student's distance to each."""
    summary = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == dataset]
        row = {r["model"]: r["test_accuracy"] for r in mine if r["model"] != "member"}
        members = [r["test_accuracy"] for r in mine if r["model"] == "member"]
        if members:
            row["member mean"] = statistics.mean(members)
        distilled = row.get(f"student-{LAYERS}L distilled")
        if distilled is not None and "teacher" in row:
            row["distilled minus ensemble"] = distilled - row["teacher"]
            row["distilled minus member mean"] = distilled - row["member mean"]
        summary[dataset] = row
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "distill-full.json", work="/tmp/textclf-distill-full")
    parser.add_argument("--datasets", default="trec,ag_news_subset")
    parser.add_argument("--seeds", default=SEEDS, help="the ensemble's members (default %(default)s)")
    args = parser.parse_args(argv)
    if shared_data_missing():
        return 0
    out, work = Path(args.out), Path(args.work)
    runs = load_runs(out)

    def save() -> None:
        save_runs(out, runs, summary=summarise(runs))

    for dataset in args.datasets.split(","):
        run_dataset(dataset, args.seeds, work, runs, save)
    save()
    for dataset, row in summarise(runs).items():
        print(dataset + ": " + ", ".join(f"{name} {value:+.4f}" if "minus" in name else f"{name} {value:.4f}"
                                         for name, value in row.items()))
    print(f"wrote {out} ({cpu_model()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
