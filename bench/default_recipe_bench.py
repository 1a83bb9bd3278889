"""The default recipe against the plain one on full data sets: is ``textclf train`` with no recipe flag at least as
accurate as the defaults it replaced?

``recipe auto`` became the default because it wins on small data (docs/small-data.md). This benchmark checks the
other end: on the full TREC and AG News subset training sets, ``textclf train`` with no recipe flag (auto, which
picks fine-tuning there and sizes epochs, learning rate and max_length to the data) against ``--recipe fine-tune``
with the defaults of the releases before it (3 epochs, lr 5e-5, batch 32, max_length 128), three seeds each, the
same encoder (``minilm``), the data sets' own dev and test splits. Each run is the command line a user types, in a
fresh process; the two recipes alternate within a seed.

    python -m bench.default_recipe_bench                      # writes bench/results/default-recipe.json
    python -m bench.default_recipe_bench --datasets trec --seeds 0

Each run's seconds are wall time of the whole command (reading, training, evaluating, reports); runs kept in the
results file are not repeated, so the benchmark resumes where it stopped.
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

RECIPES = {"default (auto)": [], "fine-tune (previous default)": ["--recipe", "fine-tune"]}


def run_one(dataset: str, recipe: str, seed: int, work: Path) -> dict:
    out = work / f"{dataset}-{recipe.split()[0]}-{seed}"
    command = [sys.executable, "-m", "textclf", "train", "--data", str(DATA / dataset), "--model", "minilm",
               "--output", str(out), "--seed", str(seed), "--overwrite", "--quiet", *RECIPES[recipe]]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    config = (out / "config.yaml").read_text(encoding="utf-8")
    chosen = next((line.strip() for line in done.stdout.splitlines() if line.startswith("recipe ")), None)
    return {"dataset": dataset, "recipe": recipe, "seed": seed, "seconds": round(seconds, 1),
            "test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
            "chosen": chosen, "config_yaml": config}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for recipe in RECIPES:
            mine = [r for r in runs if r["dataset"] == dataset and r["recipe"] == recipe]
            if not mine:
                continue
            rows.append({"dataset": dataset, "recipe": recipe, "seeds": len(mine),
                         "accuracy": statistics.mean(r["test_accuracy"] for r in mine),
                         "accuracy_sd": statistics.pstdev(r["test_accuracy"] for r in mine),
                         "macro_f1": statistics.mean(r["test_macro_f1"] for r in mine),
                         "seconds": statistics.median(r["seconds"] for r in mine)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "default-recipe.json", work="/tmp/textclf-default-recipe")
    parser.add_argument("--datasets", default="trec,ag_news_subset")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    if shared_data_missing():
        return 0
    out = Path(args.out)
    runs = load_runs(out)  # kept, not repeated: the benchmark resumes where it stopped
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            order = list(RECIPES) if seed % 2 == 0 else list(reversed(RECIPES))
            for recipe in order:
                if any((r["dataset"], r["recipe"], r["seed"]) == (dataset, recipe, seed) for r in runs):
                    continue
                runs.append(run_one(dataset, recipe, seed, Path(args.work)))
                last = runs[-1]
                print(f"{dataset} seed {seed} {recipe}: accuracy {last['test_accuracy']:.4f}, macro F1 "
                      f"{last['test_macro_f1']:.4f}, {last['seconds']:.0f} s", flush=True)
                save_runs(out, runs, summary=summarise(runs))
    summary = summarise(runs)
    print(f"\n{'data set':<16} {'recipe':<30} {'accuracy':>14} {'macro F1':>9} {'s/run':>7}")
    for row in summary:
        print(f"{row['dataset']:<16} {row['recipe']:<30} {row['accuracy']:.4f} ± {row['accuracy_sd']:.4f} "
              f"{row['macro_f1']:>9.4f} {row['seconds']:>7.0f}")
    save_runs(out, runs, summary=summary)
    print(f"wrote {out} ({cpu_model()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
