"""Long texts: truncation against sliding windows, on ChnSentiCorp hotel reviews (avg 127 tokens, p99 689).

Every run fine-tunes ``minilm`` with the same recipe and differs only in how texts longer than the window are read:

* ``truncate-64``           -- the first 64 tokens (the default behaviour, at a short window);
* ``windows-64-mean``       -- windows of 64 tokens, 16 shared between neighbours, at most 8 per text, mean of the
  window logits (``max`` and ``attention`` variants likewise);
* ``truncate-256``          -- the first 256 tokens: the "longer encoder window" reference.

The recipe is bounded so that each run takes about ten minutes on two shared CPU cores: a stratified subset of the
training split (``--train-rows``, default 1000), 2 epochs, lr 2e-4, batch 32, bf16 autocast where the CPU has it,
mean pooling (MiniLM's own; its BERT pooler is untrained), the embeddings and the lower 4 of 6 layers frozen
(``--freeze-layers-below``), no dev split (the final weights are scored).
The full test split (777 reviews) is scored for every run.

Reported per run: test accuracy and macro-F1, texts truncated (train / test), windows and tokens per text, and the
wall-clock and CPU time (``resource.getrusage``: user + system of this process, all threads) of the whole
``fit`` (training plus the test evaluation). Results are merged into ``bench/results/long-texts.json`` after each
run, so runs can be made one by one.

    HF_HUB_OFFLINE=1 python -m bench.long_text_bench                         # every run
    HF_HUB_OFFLINE=1 python -m bench.long_text_bench --runs truncate-64 windows-64-mean
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "long-texts.json"
DATA = ROOT.parent / "shared" / "data" / "chnsenticorp_htl"
RECIPE = {"epochs": 2, "lr": 2e-4, "batch_size": 32, "precision": "auto", "device": "cpu", "seed": 42,
          "warmup_ratio": 0.1, "log_steps": 10}
WINDOWS = {"long_texts": "windows", "max_length": 64, "window_overlap": 16, "max_windows": 8}
RUNS = {
    "truncate-64": {"max_length": 64},
    "windows-64-mean": {**WINDOWS, "window_aggregation": "mean"},
    "truncate-256": {"max_length": 256},
    "windows-64-max": {**WINDOWS, "window_aggregation": "max"},
    "windows-64-attention": {**WINDOWS, "window_aggregation": "attention"},
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, data, args) -> dict:
    import numpy as np

    import textclf

    config = textclf.TrainConfig(**{**RECIPE, "lr": args.lr}, **RUNS[name])
    out = Path(args.work) / name
    wall, cpu, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
    trainer = textclf.Trainer(args.model, data, out, config, progress=False, overwrite=True,
                              model_config=textclf.ModelConfig(pooling="mean",
                                                               freeze_layers_below=args.freeze_layers_below))
    result = trainer.fit()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    test = trainer._tokenize(data.test)  # token counts for the table (tokenizing 777 texts takes a moment)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    train_ds = trainer.train_dataset
    entry = {
        "run": name,
        "settings": RUNS[name],
        "test_accuracy": round(result.test["accuracy"], 4),
        "test_macro_f1": round(result.test["macro_f1"], 4),
        "truncated_rows": metrics.get("truncated_rows"),
        "train_rows": len(train_ds),
        "test_rows": len(data.test),
        "windows_per_text": round(float(train_ds.num_windows.mean()), 2) if trainer.windows else 1.0,
        "train_tokens_per_text": round(float(np.mean(train_ds.lengths)), 1),
        "test_tokens_per_text": round(float(np.mean(test.lengths)), 1),
        "optimizer_steps": result.global_step,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_average_at_start": round(load, 2),
        "precision": trainer.runtime.precision,
    }
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # keep the work folder small
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--train-rows", type=int, default=1000, help="stratified training subset (default 1000)")
    parser.add_argument("--freeze-layers-below", type=lambda v: None if v.lower() == "none" else int(v), default=4,
                        help="frozen lower layers (default 4 of 6; none trains every layer)")
    parser.add_argument("--model", default="minilm", help="encoder to fine-tune (default minilm), e.g. the Chinese "
                        "encoder of docs/pretraining.md")
    parser.add_argument("--lr", type=float, default=RECIPE["lr"], help=f"peak learning rate (default {RECIPE['lr']})")
    parser.add_argument("--test-rows", type=int, help="score only the first N test rows (a quick smoke run)")
    parser.add_argument("--work", default=str(ROOT / "bench" / "work" / "long-texts"), help="run folders")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch

    import textclf
    from textclf.data.readers import DatasetSplits, stratified_split

    full = textclf.load_dataset(DATA)
    fraction = args.train_rows / len(full.train)
    _, subset = stratified_split(full.train, fraction, seed=0, names=("rest", "train"))
    test = full.test if args.test_rows is None else full.test.subset(range(args.test_rows))
    data = DatasetSplits(subset, None, test, full.label_map)
    output = Path(args.output)
    results = json.loads(output.read_text(encoding="utf-8")) if output.is_file() else {}
    results["setup"] = {
        "data": "chnsenticorp_htl", "train_rows": len(subset), "train_rows_available": len(full.train),
        "test_rows": len(test), "recipe": {**RECIPE, "lr": args.lr},
        "model": "minilm (all-MiniLM-L6-v2)" if args.model == "minilm" else args.model,
        "pooling": "mean", "freeze_layers_below": args.freeze_layers_below, "dev": "none (final weights scored)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
                   f"torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "command": " ".join(["HF_HUB_OFFLINE=1 python -m bench.long_text_bench", *(sys.argv[1:] if argv is None
                                                                                   else argv)]),
    }
    runs = results.setdefault("runs", {})
    for name in args.runs:
        print(f"== {name} ...", flush=True)
        runs[name] = run_one(name, data, args)
        print(json.dumps(runs[name]), flush=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
