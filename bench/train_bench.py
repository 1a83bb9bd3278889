"""Training and prediction throughput: textclf against the Hugging Face ``Trainer``, side by side in one run.

Each measurement runs in a fresh subprocess (so peak RSS is that run's own), and the systems alternate
per dataset (textclf, textclf-plain, peer default, peer best, then back in reverse order) so that a noisy
machine slows them alike.

Same encoder (``minilm``), data and hyper-parameters for both: 1 epoch, batch 32, max_length 128, lr 1e-4,
warmup 10%, weight decay 0.01, gradient clipping 1.0, seed 0. The peer runs in its default configuration
(fp32, dynamic padding) and its best (bf16 autocast + length-grouped sampling; fp32 + grouping on a CPU without
native bf16, where bf16 is emulated and far slower).

Reported per run: train samples/s and real (non-pad) tokens/s over the training loop alone, predict
samples/s on the test split, test accuracy and macro-F1, peak RSS, and model FLOPs utilisation (MFU):
training FLOPs per real token x tokens/s over the matmul peak, measured in the same run, of the precision the
run computed in (the JSON also holds it against the bf16 peak).

    python -m bench.train_bench                 # both datasets, writes bench/results/train.json
    python -m bench.train_bench --datasets trec --max-train-rows 1000   # a quick look
    python -m bench.train_bench --max-train-rows 2000 --seeds 0,1,2     # accuracy averaged over 3 seeds
    python -m bench.train_bench --datasets trec --systems textclf --before ../textclf-0.x   # against a checkout

``--before DIR`` adds ``textclf-before``: textclf's default run from another checkout (an earlier commit, e.g. made
with ``git worktree add``), measured alternately with this one, so a refactor can show it kept speed and accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HYPER = {"epochs": 1, "batch_size": 32, "max_length": 128, "lr": 1e-4, "warmup_ratio": 0.1, "weight_decay": 0.01,
         "max_grad_norm": 1.0, "seed": 0}


def data_dir(name: str) -> Path:
    """NAME itself if it is a folder; else ../shared/data/NAME (benchmarks may read it), else examples/data/NAME."""
    for candidate in (Path(name), ROOT.parent / "shared" / "data" / name, ROOT / "examples" / "data" / name):
        if (candidate / "train.csv").is_file():
            return candidate
    raise SystemExit(f"dataset {name} not found in ../shared/data or examples/data")


# ==================================================================================================== workers


def run_textclf(dataset: str, precision: str, max_rows: int | None, model: str = "minilm",
                speedups: bool = True, seed: int = HYPER["seed"]) -> dict:
    import textclf

    class Timer(textclf.Callback):
        """Times the training loop alone: first step to last optimizer step (no loading, tokenization, final
        evaluation or model saving, as the peer's on_train_begin/on_train_end with evaluation and saving off)."""

        def on_train_begin(self, trainer):
            self.start = time.perf_counter()

        def on_step_end(self, trainer):
            self.seconds = time.perf_counter() - self.start

    data = textclf.load_dataset(data_dir(dataset))
    if max_rows:
        data.train = data.train.subset(range(min(max_rows, len(data.train))))
    timer = Timer()
    config = textclf.TrainConfig(**{**HYPER, "seed": seed}, precision=precision, log_steps=50, speedups=speedups)
    out = Path(os.environ.get("BENCH_WORK", "/tmp/textclf-bench")) / f"textclf-{dataset}-{precision}"
    trainer = textclf.Trainer(model=model, data=data, output_dir=out, config=config, callbacks=[timer],
                              overwrite=True, progress=False)
    trainer.fit()
    tokens = int(trainer.train_dataset.lengths.sum())
    report = trainer.evaluate(data.test)
    predictor = textclf.Predictor(trainer.model, trainer.tokenizer, precision=precision, batch_size=128,
                                  max_length=HYPER["max_length"])
    predictor.predict(data.test.texts[:64])  # warm-up
    start = time.perf_counter()
    predictions = predictor.predict(data.test.texts)
    predict_seconds = time.perf_counter() - start
    one_by_one = [p.label for p in predictor.predict(data.test.texts[:50], batch_size=1)]
    in_order = [p.label for p in predictions[:50]] == one_by_one  # batched, length-sorted results keep input order
    return _result(len(data.train), tokens, timer.seconds, len(data.test), predict_seconds, report.accuracy,
                   report.macro_f1, in_order=in_order, encoder=trainer.model.encoder,
                   lengths=trainer.train_dataset.lengths, precision=trainer.runtime.precision)


def run_peer(dataset: str, precision: str, group_by_length: bool, max_rows: int | None, model: str = "minilm",
             seed: int = HYPER["seed"]) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    import textclf
    from textclf.model.classifier import resolve_model_name

    data = textclf.load_dataset(data_dir(dataset))
    if max_rows:
        data.train = data.train.subset(range(min(max_rows, len(data.train))))
    path = resolve_model_name(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    label_map = data.label_map

    class Rows(torch.utils.data.Dataset):
        def __init__(self, split):
            encoded = tokenizer(split.texts, truncation=True, max_length=HYPER["max_length"])
            self.ids = encoded["input_ids"]
            self.labels = label_map.encode_many(split.labels)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": [1] * len(self.ids[i]), "labels": self.labels[i]}

    train, test = Rows(data.train), Rows(data.test)
    torch.manual_seed(seed)
    classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(label_map)).float()

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()
    args = TrainingArguments(
        output_dir=str(Path(os.environ.get("BENCH_WORK", "/tmp/textclf-bench")) / f"peer-{dataset}"),
        num_train_epochs=HYPER["epochs"], per_device_train_batch_size=HYPER["batch_size"],
        per_device_eval_batch_size=128, learning_rate=HYPER["lr"], warmup_steps=HYPER["warmup_ratio"],
        weight_decay=HYPER["weight_decay"], max_grad_norm=HYPER["max_grad_norm"], seed=seed,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        eval_strategy="no", save_strategy="no", report_to="none", logging_steps=50, disable_tqdm=True,
    )
    peer = Trainer(model=classifier, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=[timer])
    peer.train()
    peer.predict(torch.utils.data.Subset(test, range(64)))  # warm-up
    start = time.perf_counter()
    output = peer.predict(test)
    predict_seconds = time.perf_counter() - start
    predicted = np.argmax(output.predictions, axis=-1)
    # With group_by_length the peer also length-sorts the rows it predicts (transformers 5 applies the train
    # sampling strategy to evaluation): its predictions come back in that order, with label_ids in the same order.
    gold = output.label_ids
    tokens = sum(len(ids) for ids in train.ids)
    return _result(len(train), tokens, timer.seconds, len(test), predict_seconds,
                   accuracy_score(gold, predicted), f1_score(gold, predicted, average="macro"),
                   encoder=classifier.base_model, lengths=[len(ids) for ids in train.ids], precision=precision)


def training_flops_per_token(encoder, lengths) -> float:
    """Forward + backward FLOPs per real token: 3 x (2 x dense weights + attention over the mean length)."""
    import numpy as np

    config = encoder.config
    dense = sum(p.numel() for name, p in encoder.named_parameters()
                if p.ndim == 2 and "embeddings" not in name)
    mean_length = float(np.mean(lengths))
    attention = 2 * 2 * config.num_hidden_layers * mean_length * config.hidden_size  # QK^T and AV
    return 3.0 * (2.0 * dense + attention)


def _result(train_rows, train_tokens, train_seconds, test_rows, predict_seconds, accuracy, macro_f1, encoder,
            lengths, **extra) -> dict:
    return {
        "train_samples_per_s": train_rows / train_seconds,
        "train_tokens_per_s": train_tokens / train_seconds,
        "train_seconds": train_seconds,
        "predict_samples_per_s": test_rows / predict_seconds,
        "test_accuracy": float(accuracy),
        "test_macro_f1": float(macro_f1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_token": training_flops_per_token(encoder, lengths),
        **extra,
    }


def matmul_peaks(size: int = 2048, repeats: int = 10) -> dict:
    """Measured fp32 and bf16 matmul throughput (GFLOP/s) of this machine, as the MFU denominators."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        peaks[name] = repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9
    return peaks


# ==================================================================================================== driver

def native_bf16() -> bool:
    """bf16 where the hardware computes it natively: a GPU with bf16, or a CPU with AVX512-BF16 / AMX."""
    import torch

    from textclf.runtime import cpu_supports_bf16

    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_supports_bf16()


def systems() -> dict[str, list[str]]:
    """The four systems' worker arguments. The peer's best configuration uses bf16 only where it is native: on a
    CPU without it, bf16 is emulated (about 400x slower matmuls measured on an AVX2-only CPU), so its best there
    is fp32 + grouping."""
    best_precision = "bf16" if native_bf16() else "fp32"
    return {
        "textclf": ["--system", "textclf", "--precision", "auto"],
        "textclf-plain": ["--system", "textclf", "--precision", "auto", "--no-speedups"],
        "peer-default": ["--system", "peer", "--precision", "fp32"],
        "peer-best": ["--system", "peer", "--precision", best_precision, "--group-by-length"],
    }


# textclf-plain: textclf with train.speedups off, to show what those levers buy.
SYSTEMS = ("textclf", "textclf-plain", "peer-default", "peer-best")
COMPARED = ("peer-default", "peer-best", "textclf-plain")  # textclf's ratios are reported against these


def measure(system: str, dataset: str, max_rows: int | None, commands: dict[str, list[str]],
            model: str = "minilm", seed: int = HYPER["seed"], trees: dict[str, Path] | None = None) -> dict:
    tree = (trees or {}).get(system, ROOT)  # the checkout whose textclf (and worker) this system runs
    command = [sys.executable, "-m", "bench.train_bench", "worker", "--dataset", str(data_dir(dataset)), "--model",
               model, "--seed", str(seed), *commands[system]]
    if max_rows:
        command += ["--max-train-rows", str(max_rows)]
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{system} on {dataset} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=("compare", "worker"))
    parser.add_argument("--datasets", default="trec,ag_news_subset")
    parser.add_argument("--max-train-rows", type=int)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per dataset and seed")
    parser.add_argument("--seeds", default=str(HYPER["seed"]), help="comma-separated seeds; accuracy is averaged "
                        "over them (one test set's accuracy moves by a point or more with the seed alone)")
    parser.add_argument("--seed", type=int, default=HYPER["seed"], help="worker: the run's seed")
    parser.add_argument("--dataset")
    parser.add_argument("--system", choices=("textclf", "peer"))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--no-speedups", action="store_true", help="textclf with train.speedups off")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--output", default=str(RESULTS / "train.json"))
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {', '.join(SYSTEMS)} (textclf is always run)")
    parser.add_argument("--before", help="another checkout of textclf to measure as textclf-before")
    args = parser.parse_args(argv)

    if args.mode == "worker":
        if args.system == "textclf":
            result = run_textclf(args.dataset, args.precision, args.max_train_rows, args.model,
                                 speedups=not args.no_speedups, seed=args.seed)
        else:
            result = run_peer(args.dataset, args.precision, args.group_by_length, args.max_train_rows, args.model,
                              seed=args.seed)
        print(json.dumps(result))
        return 0

    peaks = matmul_peaks()
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    commands = systems()
    chosen = ["textclf", *(s for s in args.systems.split(",") if s in SYSTEMS and s != "textclf")]
    trees = {}
    if args.before:
        commands["textclf-before"], trees["textclf-before"] = commands["textclf"], Path(args.before).resolve()
        chosen.append("textclf-before")
    runs: dict[str, dict[str, list[dict]]] = {}
    for dataset in args.datasets.split(","):
        runs[dataset] = {name: [] for name in chosen}
        plan = [int(seed) for seed in args.seeds.split(",") for _ in range(args.rounds)]
        for round_index, seed in enumerate(plan):
            order = chosen if round_index % 2 == 0 else list(reversed(chosen))
            for system in order:
                result = measure(system, dataset, args.max_train_rows, commands, seed=seed, trees=trees)
                runs[dataset][system].append(result)
                print(f"{dataset:>16} {system:>12}: {result['train_samples_per_s']:7.1f} samples/s "
                      f"acc {result['test_accuracy']:.4f}", flush=True)
    summary = summarise(runs, peaks)
    print(format_table(summary))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"peaks_gflops": peaks, "hyper": HYPER, "summary": summary,
                                             "runs": runs, "machine": machine()}, indent=2) + "\n")
    plot(summary, Path(args.output).with_suffix(".png"))
    return 0


def summarise(runs: dict, peaks: dict) -> dict:
    import numpy as np

    summary = {}
    for dataset, results_by_system in runs.items():
        rows = {}
        for system, results in results_by_system.items():
            # Speed and memory: the median run; accuracy: the mean over runs (over seeds, with several --seeds).
            row = {key: float(np.median([r[key] for r in results])) for key in results[0]
                   if key not in ("in_order", "precision")}
            for key in ("test_accuracy", "test_macro_f1"):
                row[key] = float(np.mean([r[key] for r in results]))
            row["precision"] = results[0]["precision"]
            flops_per_s = row["train_tokens_per_s"] * row["flops_per_token"]
            row["mfu_vs_bf16_peak"] = flops_per_s / (peaks["bf16"] * 1e9)
            row["mfu_vs_own_peak"] = flops_per_s / (peaks["bf16" if row["precision"] == "bf16" else "fp32"] * 1e9)
            rows[system] = row
        ours = rows["textclf"]
        for peer in (p for p in (*COMPARED, "textclf-before") if p in rows):
            theirs = rows[peer]
            rows[f"ratio-vs-{peer}"] = {
                "train": ours["train_samples_per_s"] / theirs["train_samples_per_s"],
                "predict": ours["predict_samples_per_s"] / theirs["predict_samples_per_s"],
                "peak_rss": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
                "accuracy_points": 100 * (ours["test_accuracy"] - theirs["test_accuracy"]),
            }
        summary[dataset] = rows
    return summary


def format_table(summary: dict) -> str:
    lines = [f"{'dataset':>16} {'system':>13} {'prec':>4} {'train/s':>8} {'tok/s':>8} {'pred/s':>8} {'acc':>6} "
             f"{'F1':>6} {'RSS MB':>7} {'MFU':>6}"]
    for dataset, rows in summary.items():
        for system in (s for s in rows if not s.startswith("ratio-")):
            r = rows[system]
            lines.append(f"{dataset:>16} {system:>13} {r['precision']:>4} {r['train_samples_per_s']:8.1f} "
                         f"{r['train_tokens_per_s']:8.0f} {r['predict_samples_per_s']:8.1f} {r['test_accuracy']:6.4f} "
                         f"{r['test_macro_f1']:6.4f} {r['peak_rss_mb']:7.0f} {r['mfu_vs_own_peak']:6.1%}")
        for peer in (k[len("ratio-vs-"):] for k in rows if k.startswith("ratio-vs-")):
            ratio = rows[f"ratio-vs-{peer}"]
            lines.append(f"{dataset:>16} textclf/{peer}: train x{ratio['train']:.2f}, "
                         f"predict x{ratio['predict']:.2f}, "
                         f"peak RSS x{ratio['peak_rss']:.2f}, accuracy {ratio['accuracy_points']:+.2f} points")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    datasets = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.2
    shown = [s for s in summary[datasets[0]] if not s.startswith("ratio-")]
    for i, system in enumerate(shown):
        values = [summary[d][system]["train_samples_per_s"] for d in datasets]
        ax.bar([x + (i - (len(shown) - 1) / 2) * width for x in range(len(datasets))], values, width, label=system)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("train samples / s")
    ax.set_title("Training throughput, minilm, 1 epoch, batch 32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine() -> dict:
    import platform

    import torch

    from textclf.runtime import cpu_supports_bf16

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "cpu": _cpu_model(), "cpu_native_bf16": cpu_supports_bf16(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
