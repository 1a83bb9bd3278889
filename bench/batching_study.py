"""Does length-grouped batching cost accuracy? Ungrouped, length-grouped and label-stratified length-grouped batches
compared on the same runs: data sets x training sizes x seeds, accuracy and macro-F1 on test, padding and step time.

Usage (offline, from the repository root; the study is resumable: finished runs in --out are skipped)::

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python -m bench.batching_study                  # the full study
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python -m bench.batching_study --seeds 0,1 --sizes 200 --datasets trec
    PYTHONPATH=. .venv/bin/python -m bench.batching_study --report   # table (markdown) and plot from --out

Each run: ``size`` training rows drawn from the data set's train split (stratified, draw seed = training seed),
no dev split (the last model is scored, so nothing but the sampler differs), the official test split (at most 500
rows, drawn once with seed 0), batch 32,
max_length 64, warmup 10%, precision ``auto`` (bf16 on a CPU with native bf16, else fp32), epochs
``min(8, ceil(1600 / size))`` so that small sets still get about 50 optimizer steps. The English sets use
``minilm`` at lr 1e-4; the Chinese set (waimai_10k reviews) uses a 2-layer, 128-wide BERT built from a config
with the bert-base-chinese tokenizer (no pretrained Chinese weights exist offline) at lr 5e-4. The samplers of
one (data set, size, seed) see the same rows, the same initial weights and the same seed, so their accuracies are
compared pairwise.

Samplers:
  random      shuffled rows (``group_by_length: false``)
  grouped     mega-batches of 50 batches sorted by length (the default up to 0.x)
  stratified  the same mega-batches sorted by each row's length rank within its class (the new default)

Padding is counted exactly from each run's batches (padded tokens / real tokens); step time is the training loop's
wall time per optimizer step on this machine (noisy on a shared CPU: compare the padding ratio first).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CHINESE_TOKENIZER = ROOT / "examples" / "tokenizers" / "bert-base-chinese"
DATASETS = {  # name: (encoder, lr)
    "trec": ("minilm", 1e-4),
    "sst2": ("minilm", 1e-4),
    "ag_news_subset": ("minilm", 1e-4),
    "waimai_10k": ("chinese-from-config", 5e-4),
}
SAMPLERS = ("random", "grouped", "stratified")
BATCH, MAX_LENGTH, TEST_ROWS = 32, 64, 500


def epochs_for(size: int) -> int:
    return min(8, max(1, math.ceil(1600 / size)))


def read(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [(r["text"], r["label"]) for r in csv.DictReader(handle)]


def draw(rows: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` rows, stratified by label (all rows when ``n`` is the whole split)."""
    from sklearn.model_selection import train_test_split

    if n >= len(rows):
        return list(rows)
    labels = [label for _, label in rows]
    kept, _ = train_test_split(rows, train_size=n, stratify=labels, random_state=seed)
    return kept


def chinese_encoder(work: Path) -> str:
    """A 2-layer, 128-wide BERT from a config with bert-base-chinese's vocabulary, saved once (init seed 0)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = work / "chinese-encoder"
    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(CHINESE_TOKENIZER))
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=512, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def make_trainer_class(sampler: str):
    """A Trainer whose training batches come from ``sampler`` (the study's only difference between runs)."""
    import textclf
    from textclf.data.collate import LengthGroupedBatches, RandomBatches, length_strata

    class StudyTrainer(textclf.Trainer):
        @property
        def train_sampler(self):
            if not hasattr(self, "_train_sampler"):
                data, cfg = self.train_dataset, self.config
                if sampler == "random":
                    self._train_sampler = RandomBatches(len(data), cfg.batch_size, cfg.seed)
                else:
                    strata = length_strata(data.labels) if sampler == "stratified" else None
                    self._train_sampler = LengthGroupedBatches(data.lengths, cfg.batch_size, cfg.seed, strata=strata)
            return self._train_sampler

    return StudyTrainer


def run_one(dataset: str, size: int, seed: int, sampler: str, work: Path, threads: int) -> dict:
    import numpy as np
    import torch

    import textclf

    torch.set_num_threads(threads)
    folder = SHARED / "data" / dataset
    train_all = read(folder / "train.csv")
    train = draw(train_all, size, seed)
    test = draw(read(folder / "test.csv"), TEST_ROWS, 0)
    encoder, lr = DATASETS[dataset]
    model = chinese_encoder(work) if encoder == "chinese-from-config" else encoder
    epochs = epochs_for(len(train))
    config = textclf.TrainConfig(epochs=epochs, lr=lr, batch_size=BATCH, max_length=MAX_LENGTH, seed=seed,
                                 device="cpu", log_steps=1000, calibrate=False)

    # No dev split: the model scored on test is the last one, so the sampler alone decides it (no checkpoint
    # selection in between), and the study spends its CPU time on training rather than on evaluations.
    data = dataclasses.replace(textclf.load_dataset(train, dev=test, test=test), dev=None)
    trainer = make_trainer_class(sampler)(model, data, work / "run", config, overwrite=True, progress=False)
    lengths = trainer.train_dataset.lengths
    padded = real = 0
    for epoch in range(epochs):
        for batch in trainer.train_sampler.epoch_batches(epoch):
            padded += len(batch) * int(lengths[batch].max())
            real += int(lengths[batch].sum())
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start  # includes the final test evaluation and saving last/: same for all samplers
    return {"dataset": dataset, "size": len(train), "seed": seed, "sampler": sampler, "epochs": epochs,
            "steps": result.global_step, "test_accuracy": result.test["accuracy"],
            "test_macro_f1": result.test["macro_f1"], "padding_ratio": padded / real,
            "mean_tokens": float(np.mean(lengths)), "fit_s": wall, "precision": trainer.runtime.precision}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                kind = "AVX-512 bf16" if "avx512_bf16" in flags else "AVX2, no native bf16"
                return f"{line.split(':', 1)[1].strip()} ({kind})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ============================================================================================================ report


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (data set, size, sampler): mean and standard deviation over seeds, and the paired difference to
    ``random`` (same data draw and seed)."""
    by_key: dict[tuple, dict[int, dict]] = {}
    for r in runs:
        by_key.setdefault((r["dataset"], r["size"], r["sampler"]), {})[r["seed"]] = r
    rows = []
    for (dataset, size, sampler), per_seed in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                    SAMPLERS.index(kv[0][2]))):
        base = by_key.get((dataset, size, "random"), {})
        seeds = sorted(set(per_seed) & set(base)) or sorted(per_seed)
        acc = [per_seed[s]["test_accuracy"] for s in seeds]
        f1 = [per_seed[s]["test_macro_f1"] for s in seeds]
        diff = [per_seed[s]["test_accuracy"] - base[s]["test_accuracy"] for s in seeds if s in base]
        steps = [per_seed[s]["fit_s"] / per_seed[s]["steps"] for s in seeds]
        rows.append({
            "dataset": dataset, "size": size, "sampler": sampler, "seeds": len(seeds),
            "acc_mean": statistics.mean(acc), "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "f1_mean": statistics.mean(f1), "f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
            "diff_mean": statistics.mean(diff) if diff else 0.0,
            "diff_se": statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0,
            "padding": statistics.mean(per_seed[s]["padding_ratio"] for s in seeds),
            "s_per_step": statistics.median(steps),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| data set | rows | sampler | seeds | accuracy mean ± sd | vs random (paired) | macro-F1 mean ± sd | "
             "padded / real tokens | s per step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = "" if r["sampler"] == "random" else f"{100 * r['diff_mean']:+.2f} ± {100 * r['diff_se']:.2f}"
        lines.append(f"| {r['dataset']} | {r['size']} | {r['sampler']} | {r['seeds']} | "
                     f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | {vs} | "
                     f"{100 * r['f1_mean']:.2f} ± {100 * r['f1_std']:.2f} | {r['padding']:.2f} | "
                     f"{r['s_per_step']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Three rows per data set: accuracy (mean ± sd over seeds), the paired difference to random batches (mean ±
    standard error, with the ±0.5-point band the default must stay in), and padded / real tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    colours = {"random": "tab:blue", "grouped": "tab:orange", "stratified": "tab:green"}
    fig, axes = plt.subplots(3, len(datasets), figsize=(4 * len(datasets), 9), squeeze=False, sharex="col")
    for col, dataset in enumerate(datasets):
        for k, sampler in enumerate(SAMPLERS):
            mine = sorted((r for r in rows if r["dataset"] == dataset and r["sampler"] == sampler),
                          key=lambda r: r["size"])
            if not mine:
                continue
            sizes = [r["size"] * (1 + 0.04 * (k - 1)) for r in mine]  # side by side, not on top of each other
            style = {"marker": "o", "capsize": 3, "color": colours[sampler], "label": sampler}
            axes[0, col].errorbar(sizes, [100 * r["acc_mean"] for r in mine],
                                  yerr=[100 * r["acc_std"] for r in mine], **style)
            if sampler != "random":
                axes[1, col].errorbar(sizes, [100 * r["diff_mean"] for r in mine],
                                      yerr=[100 * r["diff_se"] for r in mine], **style)
            axes[2, col].plot(sizes, [r["padding"] for r in mine], marker="o", color=colours[sampler],
                              label=sampler)
        axes[1, col].axhspan(-0.5, 0.5, color="0.9")
        axes[1, col].axhline(0, color="tab:blue", linewidth=1)
        axes[0, col].set_title(dataset)
        axes[2, col].set_xscale("log")
        ticks = sorted({r["size"] for r in rows if r["dataset"] == dataset})
        axes[2, col].set_xticks(ticks, [str(t) for t in ticks])
        axes[2, col].minorticks_off()
        axes[2, col].set_xlabel("training rows")
    axes[0, 0].set_ylabel("test accuracy, %\n(mean ± sd over seeds)")
    axes[1, 0].set_ylabel("accuracy - random batches,\npoints (paired mean ± se)")
    axes[2, 0].set_ylabel("padded / real tokens")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batching-study.json"))
    parser.add_argument("--work", default="/tmp/textclf-batching-study")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--sizes", default="200,1000,full", help="training rows per run; 'full' is the whole split")
    parser.add_argument("--seeds", default=",".join(map(str, range(10))))
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="print the table and write the plot; train nothing")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "batching-study.png"))
    args = parser.parse_args(argv)

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"setup": {}, "runs": []}
    if args.report:
        rows = summarize(results["runs"])
        print(markdown(rows))
        plot(rows, Path(args.plot))
        print(f"plot: {args.plot}")
        return 0

    results["setup"] = {"cpu": cpu_name(), "threads": args.threads, "batch_size": BATCH, "max_length": MAX_LENGTH,
                        "test_rows": TEST_ROWS, "epochs": "min(8, ceil(1600 / rows))",
                        "encoders": DATASETS}
    done = {(r["dataset"], r["size_arg"], r["seed"], r["sampler"]) for r in results["runs"]}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for size_arg in args.sizes.split(","):
        for dataset in args.datasets.split(","):
            size = 10**9 if size_arg == "full" else int(size_arg)
            for seed in map(int, args.seeds.split(",")):
                for sampler in args.samplers.split(","):
                    if (dataset, size_arg, seed, sampler) in done:
                        continue
                    record = {"size_arg": size_arg, **run_one(dataset, size, seed, sampler, work, args.threads)}
                    results["runs"].append(record)
                    out.write_text(json.dumps(results, indent=1) + "\n")
                    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
