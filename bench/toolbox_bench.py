"""TF-IDF baseline vs the transformer on every real data set, and the label audit's precision/recall on injected noise.

Three parts, each writing one JSON file under ``bench/results/``:

* ``baseline``: :func:`textclf.run_baseline` on the full training split of every data set in ``../shared/data``;
  test accuracy / macro F1 (micro F1 too, which is what matters for multi-label goemotions), fit wall and CPU
  seconds. -> ``toolbox-baseline.json``
* ``compare``: training capped for CPU: ``--cap-train`` rows (stratified on the first label, seed 42) and
  ``--cap-test`` test rows; MiniLM fine-tuned ``--epochs`` epochs at max_length 128 (final weights, no dev
  selection), and the baseline fitted on the *same* capped rows, both scored on the same capped test rows.
  -> ``toolbox-compare.json``
* ``audit``: 5% of the training labels of TREC and waimai_10k changed to another class (seed 0), then
  :func:`textclf.audit` (baseline method, 5 folds, training split only); precision and recall of the flags against
  the injected rows, and precision at the top-N (N = rows injected). -> ``toolbox-audit.json``

CPU time (``time.process_time``) is reported next to wall time: the machine is shared, so wall time is noisy.

    HF_HUB_OFFLINE=1 python -m bench.toolbox_bench --part baseline
    HF_HUB_OFFLINE=1 python -m bench.toolbox_bench --part audit
    HF_HUB_OFFLINE=1 python -m bench.toolbox_bench --part compare --datasets trec sst2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared" / "data"
DATASETS = ("thucnews_titles", "chnsenticorp_htl", "waimai_10k", "online_shopping_10_cats", "sst2", "trec",
            "ag_news_subset", "goemotions", "tiny")
KEYS = ("accuracy", "macro_f1", "micro_f1")


def load(name: str):
    import textclf

    multi = name == "goemotions"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return textclf.load_dataset(SHARED / name, multi_label=multi, label_column="labels" if multi else "label")


def scores(report: dict) -> dict:
    return {k: round(float(report[k]), 4) for k in KEYS}


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "note": "2 CPU cores shared with other engineers' runs: wall times are noisy, CPU times less so"}


def part_baseline(save, datasets: list[str]) -> dict:
    from textclf import run_baseline

    out = {}
    for name in datasets:
        data = load(name)
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_baseline(data, None)
        entry = {"train_rows": len(data.train), "test_rows": len(data.test),
                 "analyzer": result["baseline"]["analyzer"],
                 "num_features": result["baseline"]["num_features"],
                 "fit_wall_s": round(result["baseline"]["fit_seconds"], 2),
                 "fit_cpu_s": round(result["baseline"]["fit_cpu_seconds"], 2),
                 "total_wall_s": round(time.perf_counter() - wall, 2),
                 "total_cpu_s": round(time.process_time() - cpu, 2),
                 "dev": scores(result["dev"]), "test": scores(result["test"])}
        out[name] = entry
        print(name, json.dumps(entry), flush=True)
        save(name, entry)  # after every data set: a stopped run keeps what it measured
    return out


def capped(split, rows: int, seed: int = 42):
    from textclf.data.readers import stratified_split

    if len(split) <= rows:
        return split
    kept, _ = stratified_split(split, 1 - rows / len(split), seed, names=(split.name, "rest"))
    return kept


def part_compare(save, datasets: list[str], cap_train: int, cap_test: int, epochs: float) -> dict:
    import torch

    from textclf import TfidfBaseline, TrainConfig
    from textclf.tools.crossval import _score, train_fold

    out = {}
    for name in datasets:
        data = load(name)
        train, test = capped(data.train, cap_train), capped(data.test, cap_test)
        wall, cpu = time.perf_counter(), time.process_time()
        clf = TfidfBaseline().fit(train.texts, train.labels, label_map=data.label_map)
        base = scores(clf.evaluate(test.texts, test.labels).to_dict())
        base_time = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
        config = TrainConfig(epochs=epochs, batch_size=32, max_length=128, lr=1e-4, warmup_ratio=0.1, seed=0,
                             precision="auto", device="cpu", log_steps=50)
        wall, cpu = time.perf_counter(), time.process_time()
        work = ROOT / "bench" / "work" / "toolbox" / name
        trainer = train_fold(train.texts, train.labels, data.label_map, work, "minilm", config, progress=False)
        train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
        model = scores(_score(trainer, test))
        entry = {"train_rows": len(train), "test_rows": len(test), "baseline": {**base, **base_time},
                 "minilm": {**model, "precision": trainer.runtime.precision, "epochs": epochs,
                            "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
                            "total_wall_s": round(time.perf_counter() - wall, 1),
                            "total_cpu_s": round(time.process_time() - cpu, 1)}}
        out[name] = entry
        print(name, json.dumps(entry), flush=True)
        save(name, entry)  # after every data set: a stopped run keeps what it measured
        del trainer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def part_audit(save, datasets: list[str], share: float = 0.05, seed: int = 0) -> dict:
    from textclf.tools import audit

    out = {}
    for name in datasets:
        data = load(name)
        rng = random.Random(seed)
        n = len(data.train)
        injected = set(rng.sample(range(n), round(share * n)))
        labels = list(data.train.labels)
        for i in injected:
            labels[i] = rng.choice([label for label in data.label_map.names if label != labels[i]])
        data.train.labels = labels
        wall, cpu = time.perf_counter(), time.process_time()
        result = audit(data, "baseline", 5, splits=("train",))
        flagged = result.flagged("train")
        hits = len(flagged & injected)
        top = set(result.top(len(injected)))
        entry = {"train_rows": n, "injected": len(injected), "flagged": len(flagged), "true_flags": hits,
                 "precision": round(hits / max(1, len(flagged)), 4), "recall": round(hits / len(injected), 4),
                 "precision_at_n_injected": round(len(top & injected) / len(injected), 4),
                 "out_of_fold_accuracy": round(result.summary["out_of_fold_accuracy"], 4),
                 "other_flags": {k: v for k, v in result.summary["counts"].items() if k != "label_issue"},
                 "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
        out[name] = entry
        print(name, json.dumps(entry), flush=True)
        save(name, entry)  # after every data set: a stopped run keeps what it measured
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["baseline", "compare", "audit"], required=True)
    parser.add_argument("--datasets", nargs="+", help="default: every data set (audit: trec waimai_10k)")
    parser.add_argument("--cap-train", type=int, default=2000, help="compare: training rows (default 2000)")
    parser.add_argument("--cap-test", type=int, default=2000, help="compare: test rows (default 2000)")
    parser.add_argument("--epochs", type=float, default=2, help="compare: epochs of MiniLM (default 2)")
    parser.add_argument("--output", help="JSON file (default bench/results/toolbox-PART.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = Path(args.output) if args.output else RESULTS / f"toolbox-{args.part}.json"
    command = "python -m bench.toolbox_bench " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(name: str, entry: dict) -> None:
        previous = json.loads(path.read_text()) if path.is_file() else {}
        results = {**previous.get("results", {}), name: entry}  # runs of a few data sets add to the file
        record = {"command": command, "machine": machine(), "results": results}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    if args.part == "baseline":
        part_baseline(save, args.datasets or list(DATASETS))
    elif args.part == "audit":
        part_audit(save, args.datasets or ["trec", "waimai_10k"])
    else:
        part_compare(save, args.datasets or list(DATASETS), args.cap_train, args.cap_test, args.epochs)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
