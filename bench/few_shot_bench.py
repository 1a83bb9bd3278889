"""Few labelled rows: textclf against SetFit, plain fine-tuning and the TF-IDF baseline.

For each data set (SST-2, TREC, the AG News subset from ../shared/data), each N (labelled rows per class) and each
draw (seeded: the same rows for every system), every system trains on the N x C rows only -- no dev split, as a
user with 8 rows per class has none -- and is scored on the full test set:

* ``auto``     -- ``--recipe auto``: textclf looks at the N x C rows and the encoder and picks the recipe;
* ``few-shot`` -- ``--recipe few-shot`` with its defaults plus the settings given by ``--few-shot`` (a variant);
* ``setfit``   -- the ``setfit`` package (the peer), ``SetFitModel`` over the same all-MiniLM-L6-v2 folder, its
  documented defaults (``TrainingArguments()``: oversampled unique pairs, 1 epoch, batch 16, body lr 2e-5,
  logistic-regression head), the draw as its seed;
* ``fine-tune`` -- textclf's default recipe (``textclf train`` with no flags), MiniLM;
* ``baseline`` -- ``textclf baseline`` (TF-IDF + logistic regression).

Every run is appended to the results file as it finishes, so an interrupted benchmark resumes where it stopped
(``--report`` alone rebuilds the tables and the plot). Wall time covers training and scoring the test set, in this
process, with the same threads for every system; each run also records its CPU seconds, the load average at its
end and the CPU model (a results file may be filled on more than one machine). The report prints the table of
means and a paired one: auto minus SetFit on the same draws, and SetFit's median time over auto's.

Usage (from the repository root; ``pip install -e .[bench]`` brings setfit)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python -m bench.few_shot_bench --out bench/results/few-shot.json
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python -m bench.few_shot_bench --out bench/results/few-shot.json \\
        --report --plot docs/img/few-shot.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = ("sst2", "trec", "ag_news_subset")
SYSTEMS = ("auto", "setfit", "fine-tune", "baseline")


def read(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [(row["text"], row["label"]) for row in csv.DictReader(handle)]


def draw(rows: list[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    """``per_class`` rows of every label, drawn with ``seed``; the same rows for every system."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted({label for _, label in rows}):
        members = [row for row in rows if row[1] == label]
        chosen += [members[i] for i in sorted(rng.choice(len(members), per_class, replace=False))]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def minilm_dir() -> str:
    from textclf.model.classifier import resolve_model_name

    return resolve_model_name("minilm")


def scores(gold: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": accuracy_score(gold, predicted), "macro_f1": f1_score(gold, predicted, average="macro")}


# ================================================================================================ the systems

def run_textclf(train, test, config, work: Path) -> dict:
    import textclf
    from textclf.data.labels import LabelMap
    from textclf.data.readers import DatasetSplits, read_split

    splits = DatasetSplits(read_split(train, "train"), None, read_split(test, "test"),
                           LabelMap.from_labels([label for _, label in train]))
    trainer = textclf.Trainer("minilm", splits, work, config, overwrite=True, progress=False)
    result = trainer.fit()
    return {"accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"], "steps": result.global_step,
            "settings": _settings(trainer)}


def _settings(trainer) -> dict:
    cfg = trainer.config
    return {"recipe": cfg.recipe, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "pairs_per_row": cfg.pairs_per_row, "max_length": cfg.max_length,
            "freeze_layers_below": trainer.model_config.freeze_layers_below,
            "precision": trainer.runtime.precision}  # auto picks it per CPU (docs/precision-and-gpus.md)


def run_setfit(train, test, seed: int, work: Path) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(minilm_dir())
    texts, labels = map(list, zip(*train))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(work), seed=seed, report_to="none"),
                      train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    trainer.train()
    predicted = [str(p) for p in model.predict([text for text, _ in test], batch_size=128)]
    return scores([label for _, label in test], predicted)


def run_baseline(train, test) -> dict:
    from textclf.tools.baseline import TfidfBaseline

    texts, labels = map(list, zip(*train))
    report = TfidfBaseline().fit(texts, labels).evaluate([t for t, _ in test], [label for _, label in test])
    return {"accuracy": report.accuracy, "macro_f1": report.macro_f1}


def run_one(system: str, train, test, seed: int, work: Path, few_shot: dict) -> dict:
    from textclf import TrainConfig

    common = {"seed": seed, "device": "cpu", "log_steps": 50}
    if system == "setfit":
        return run_setfit(train, test, seed, work)
    if system == "baseline":
        return run_baseline(train, test)
    recipe = {"auto": {"recipe": "auto"}, "fine-tune": {}, "few-shot": {"recipe": "few-shot", **few_shot}}[system]
    return run_textclf(train, test, TrainConfig(**common, **recipe), work)


# ================================================================================================ the grid

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/few-shot.json")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--n", default="8,16,32,64", help="labelled rows per class")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--few-shot", default="{}", help="JSON of TrainConfig settings for the few-shot system")
    parser.add_argument("--tag", default="", help="a name for this variant of a system in the results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only print the table (and --plot) of --out")
    parser.add_argument("--plot", help="PNG of accuracy against N, one panel per data set")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"machine": machine(), "runs": []}
    if not args.report:
        run_grid(args, results, out)
    print(table(results["runs"]))
    print()
    print(paired(results["runs"]))
    if args.plot:
        plot(results["runs"], Path(args.plot))
    return 0


def run_grid(args, results: dict, out: Path) -> None:
    import torch

    torch.set_num_threads(args.threads)
    done = {(r["dataset"], r["n"], r["draw"], r["system"]) for r in results["runs"]}
    few_shot = json.loads(args.few_shot)
    cpu = machine()["cpu"]  # per run: a results file may be filled on more than one machine
    for dataset in args.datasets.split(","):
        pool, test = read(DATA / dataset / "train.csv"), read(DATA / dataset / "test.csv")
        for n in [int(v) for v in args.n.split(",")]:
            for d in range(args.draws):
                train = draw(pool, n, seed=d)
                for system in args.systems.split(","):
                    name = system + (f"[{args.tag}]" if args.tag else "")
                    if (dataset, n, d, name) in done:
                        continue
                    work = Path(tempfile.mkdtemp(prefix="textclf-fewshot-"))
                    start, cpu_start = time.perf_counter(), time.process_time()
                    try:
                        outcome = run_one(system, train, test, d, work / "run", few_shot)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                    # A run that shared the cores with other work shows it: wall_s grows and cpu_s (every thread
                    # of this process) does not, so cpu_s / wall_s drops below --threads, and the load average at
                    # its end (which counts the run's own threads) rises above them.
                    record = {"dataset": dataset, "n": n, "draw": d, "system": name,
                              "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start,
                              "load_1m": os.getloadavg()[0], "cpu": cpu, **outcome}
                    results["runs"].append(record)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
                    print(json.dumps({k: v for k, v in record.items() if k != "settings"}), flush=True)


def machine() -> dict:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return {"cpu": model or platform.processor(), "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(runs: list[dict]) -> str:
    """Markdown: one row per (data set, N), per system accuracy and macro F1 (mean ± sd over draws, the number of
    draws in brackets) and the median wall time per run in seconds."""
    systems = list(dict.fromkeys(r["system"] for r in runs))
    head = "| data set | N | " + " | ".join(f"{s} accuracy | {s} macro F1 | {s} s" for s in systems) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(systems))]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for n in sorted({r["n"] for r in runs if r["dataset"] == dataset}):
            cells = []
            for s in systems:
                mine = [r for r in runs if (r["dataset"], r["n"], r["system"]) == (dataset, n, s)]
                if not mine:
                    cells += ["", "", ""]
                    continue
                # the median time: one draw that shared the CPU with another job does not move it
                cells += [f"{_mean_sd([r['accuracy'] for r in mine])} ({len(mine)})",
                          _mean_sd([r["macro_f1"] for r in mine]),
                          f"{statistics.median(r['wall_s'] for r in mine):.0f}"]
            lines.append(f"| {dataset} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(runs: list[dict], system: str = "auto", peer: str = "setfit") -> str:
    """Markdown: per (data set, N) the accuracy of ``system`` minus ``peer``'s on the same draws (mean ± sd, and on
    how many draws ``system`` is at least as good), the peer's median time over the system's, and the CPU."""
    lines = [f"| data set | N | draws | {system} - {peer} accuracy | draws {system} >= {peer} | {peer} s / {system} s "
             "| CPU |", "|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for n in sorted({r["n"] for r in runs if r["dataset"] == dataset}):
            cell = {(r["system"], r["draw"]): r for r in runs if (r["dataset"], r["n"]) == (dataset, n)}
            draws = sorted(d for s, d in cell if s == system and (peer, d) in cell)
            if not draws:
                continue
            ours, theirs = [cell[system, d] for d in draws], [cell[peer, d] for d in draws]
            differences = [a["accuracy"] - b["accuracy"] for a, b in zip(ours, theirs)]
            ratio = statistics.median(r["wall_s"] for r in theirs) / statistics.median(r["wall_s"] for r in ours)
            cpus = sorted({r.get("cpu", "?") for r in ours + theirs})
            lines.append(f"| {dataset} | {n} | {len(draws)} | {statistics.mean(differences):+.3f} ± "
                         f"{statistics.stdev(differences) if len(draws) > 1 else 0.0:.3f} | "
                         f"{sum(x >= 0 for x in differences)}/{len(draws)} | {ratio:.1f} | {', '.join(cpus)} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    systems = list(dict.fromkeys(r["system"] for r in runs))
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), dpi=110, squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for s in systems:
            ns = sorted({r["n"] for r in runs if (r["dataset"], r["system"]) == (dataset, s)})
            means = [statistics.mean(r["accuracy"] for r in runs if (r["dataset"], r["n"], r["system"]) ==
                                     (dataset, n, s)) for n in ns]
            sds = [statistics.pstdev([r["accuracy"] for r in runs if (r["dataset"], r["n"], r["system"]) ==
                                      (dataset, n, s)]) for n in ns]
            axis.errorbar(ns, means, yerr=sds, marker="o", capsize=3, label=s)
        axis.set(title=dataset, xlabel="labelled rows per class", ylabel="test accuracy", xscale="log")
        ns = sorted({r["n"] for r in runs if r["dataset"] == dataset})
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log-axis minor labels overlap
        axis.set_xticks(ns, [str(n) for n in ns])
        axis.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
