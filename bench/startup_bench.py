"""How long the light commands take to start: ``textclf --help``, ``--version``, ``info`` and ``import textclf``.

Each is run as a fresh process (as a user runs it), several times; the median wall time is reported with the CPU,
along with whether the command imported torch (it should not: ``textclf/__init__.py`` imports its names lazily).
Run it on a quiet machine: another CPU-heavy job beside it slows Python's start-up several-fold.

    python -m bench.startup_bench [--runs 7] [--out bench/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Prints whether torch was imported, after the command ran in this same process.
PROBE = ("import sys, runpy; sys.argv = ['textclf'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('textclf', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED', file=sys.stderr)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _model_folder(work: Path) -> Path:
    """A tiny model folder for ``info`` (labels, textclf.json), written without torch by hand."""
    folder = work / "best"
    folder.mkdir()
    (folder / "textclf.json").write_text(json.dumps({"base_model": "minilm", "num_labels": 2}))
    (folder / "labels.json").write_text(json.dumps({"names": ["neg", "pos"], "multi_label": False}))
    return folder


def time_command(args: list[str], runs: int) -> dict:
    seconds, torch = [], None
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        torch = "TORCH_IMPORTED" in done.stderr
    return {"command": "textclf " + " ".join(args), "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3), "runs": runs, "imports_torch": torch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default="bench/results/startup.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        model = _model_folder(Path(work))
        rows = [time_command(cmd, args.runs) for cmd in (["--help"], ["--version"], ["info", "--model", str(model)],
                                                          ["train", "--help"])]
    bare = []
    for _ in range(args.runs):  # the interpreter alone: what no import can save
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
    result = {"cpu": cpu_model(), "python": platform.python_version(), "rows": rows,
              "python_start_s": round(statistics.median(bare), 3)}
    for row in rows:
        print(f"{row['command']:<40} {row['median_s']:.3f} s (min {row['min_s']:.3f})"
              f"{'  imports torch' if row['imports_torch'] else ''}")
    print(f"{'python -c pass':<40} {result['python_start_s']:.3f} s\nCPU: {result['cpu']}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
