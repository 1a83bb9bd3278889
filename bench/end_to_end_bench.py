"""End to end: the wall time of the command a user runs, ``textclf train``, against the Hugging Face Trainer's
script, side by side in one run, with where textclf's time went.

Per data set and seed, three commands each in a fresh process, in alternating order (textclf, peer default, peer
best, then the reverse), with the same hyper-parameters as ``bench.train_bench`` (1 epoch, batch 32, max_length
128, lr 1e-4, warmup 10%, weight decay 0.01, clipping 1.0):

* ``textclf``: ``textclf train --data DIR --recipe fine-tune ...`` with those flags: reading, tokenizing, training,
  evaluating dev each epoch, the final dev and test scores, calibration, errors.csv, report.html, model cards,
  best/ and last/. Its phases come from the run's ``timings.json``; ``exit`` is the wall time after it was written.
* ``peer-default``: the peer's script (``bench.train_bench worker --system peer``): tokenize, train, predict the
  test split; fp32 and a random sampler.
* ``peer-best``: the same with length-grouped sampling, in bf16 where the CPU computes it natively (else fp32).

``--avx2`` runs all three as on a CPU without native bf16 (a laptop): PyTorch's and oneDNN's kernels limited to
AVX2 (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``), textclf with ``--precision fp32`` (what ``auto`` picks there)
and the peer's best in fp32 + grouping. Emulation keeps this machine's cores, caches and clock: say so with its
figures.

Reported: median wall seconds, mean test accuracy over the seeds, peak RSS (the child's own, from ``wait4``), the
ratios, and textclf's median seconds per phase. Runs kept in the results file are not repeated.

    python -m bench.end_to_end_bench                              # trec and ag_news_subset, seeds 0,1,2
    python -m bench.end_to_end_bench --datasets trec --seeds 0 --out /tmp/e2e.json
    python -m bench.end_to_end_bench --avx2 --datasets trec --out bench/results/end-to-end-avx2.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.resumable import ROOT, load_runs, resumable_parser, save_runs
from bench.train_bench import HYPER, data_dir, native_bf16

SYSTEMS = ("textclf", "peer-default", "peer-best")
TEXTCLF_FLAGS = ["--recipe", "fine-tune", "--model", "minilm", "--epochs", str(HYPER["epochs"]), "--batch-size",
                 str(HYPER["batch_size"]), "--max-length", str(HYPER["max_length"]), "--lr", str(HYPER["lr"]),
                 "--warmup-ratio", str(HYPER["warmup_ratio"]), "--weight-decay", str(HYPER["weight_decay"]),
                 "--max-grad-norm", str(HYPER["max_grad_norm"]), "--quiet", "--overwrite"]


# As a CPU without native bf16 computes (--avx2): set before torch loads in the child.
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run(command: list[str], avx2: bool = False) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MB) and stdout of one fresh process."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(AVX2 if avx2 else {})}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode()[-3000:]}")
        return seconds, usage.ru_maxrss // 1024, out.read().decode()


def measure(system: str, dataset: str, seed: int, work: Path, avx2: bool = False) -> dict:
    folder = data_dir(dataset)
    if system == "textclf":
        output = work / f"textclf-{dataset}"
        seconds, rss, _ = run([sys.executable, "-m", "textclf", "train", "--data", str(folder), "--output",
                               str(output), "--seed", str(seed), *TEXTCLF_FLAGS]
                              + (["--precision", "fp32"] if avx2 else []), avx2)
        metrics = json.loads((output / "metrics.json").read_text())
        timings = json.loads((output / "timings.json").read_text())
        phases = {**timings["phases"], "exit": round(seconds - timings["total_s"], 3)}
        return {"wall_s": seconds, "peak_rss_mb": rss, "test_accuracy": metrics["test"]["accuracy"],
                "phases": phases}
    precision = "bf16" if system == "peer-best" and native_bf16() and not avx2 else "fp32"
    command = [sys.executable, "-m", "bench.train_bench", "worker", "--system", "peer", "--dataset", str(folder),
               "--seed", str(seed), "--precision", precision] + (["--group-by-length"] if system == "peer-best"
                                                                  else [])
    seconds, rss, out = run(command, avx2)
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": seconds, "peak_rss_mb": rss, "test_accuracy": result["test_accuracy"], "precision": precision,
            "phases": {"training loop": round(result["train_seconds"], 3)}}


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows = {s: [r for r in runs if r["dataset"] == dataset and r["system"] == s] for s in SYSTEMS}
        line = {s: {"wall_s": round(statistics.median(r["wall_s"] for r in mine), 2),
                    "test_accuracy": round(statistics.mean(r["test_accuracy"] for r in mine), 4),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine), "runs": len(mine)}
                for s, mine in rows.items() if mine}
        if rows["textclf"]:
            names = dict.fromkeys(n for r in rows["textclf"] for n in r["phases"])
            line["textclf"]["phases"] = {n: round(statistics.median(r["phases"].get(n, 0.0) for r in rows["textclf"]),
                                                  2) for n in names}
            for peer in ("peer-default", "peer-best"):
                if peer in line:
                    line[f"textclf vs {peer}"] = {
                        "speed": round(line[peer]["wall_s"] / line["textclf"]["wall_s"], 2),
                        "accuracy_points": round(100 * (line["textclf"]["test_accuracy"]
                                                        - line[peer]["test_accuracy"]), 2)}
        summary[dataset] = line
    return summary


def table(summary: dict) -> str:
    lines = ["| data set | system | wall s (median) | test accuracy (mean) | peak RSS MB |", "|---|---|---|---|---|"]
    for dataset, line in summary.items():
        for system in SYSTEMS:
            if system in line:
                s = line[system]
                lines.append(f"| {dataset} | {system} | {s['wall_s']:.1f} | {s['test_accuracy']:.4f} | "
                             f"{s['peak_rss_mb']:.0f} |")
        for peer in ("peer-default", "peer-best"):
            if f"textclf vs {peer}" in line:
                ratio = line[f"textclf vs {peer}"]
                lines.append(f"| {dataset} | textclf / {peer} | **{ratio['speed']:.2f}x** | "
                             f"{ratio['accuracy_points']:+.2f} points | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = resumable_parser(__doc__, "end-to-end.json", work=str(Path(tempfile.gettempdir()) / "textclf-e2e"))
    parser.add_argument("--datasets", default="trec,ag_news_subset")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--avx2", action="store_true", help="as a CPU without native bf16 (AVX2 kernels, fp32)")
    args = parser.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = load_runs(out)
    systems = [s for s in args.systems.split(",") if s in SYSTEMS]
    for dataset in args.datasets.split(","):
        for index, seed in enumerate(int(s) for s in args.seeds.split(",")):
            for system in systems if index % 2 == 0 else systems[::-1]:
                if any((r["dataset"], r["system"], r["seed"]) == (dataset, system, seed) for r in runs):
                    continue
                result = measure(system, dataset, seed, work, args.avx2)
                runs.append({"dataset": dataset, "system": system, "seed": seed, "avx2": args.avx2, **result})
                print(f"{dataset} seed {seed} {system}: {result['wall_s']:.1f} s, accuracy "
                      f"{result['test_accuracy']:.4f}", flush=True)
                save_runs(out, runs, summary=summarise(runs), load_average=os.getloadavg())
    summary = summarise(runs)
    save_runs(out, runs, summary=summary)
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
