"""What the long benchmarks share: the shared data sets, and a results file they resume from.

A benchmark of many training runs (hours on 2 cores) writes its results file after every run and, started again,
keeps the runs already there instead of repeating them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.startup_bench import cpu_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def shared_data_missing() -> bool:
    """True (and said) when the shared data sets are not here, as on a fresh clone."""
    if DATA.is_dir():
        return False
    print(f"skipped: {DATA} (the shared data sets) is not here")
    return True


def load_runs(out: Path) -> list[dict]:
    """The runs an earlier, stopped invocation wrote to ``out`` (none when there is no such file)."""
    return json.loads(out.read_text(encoding="utf-8"))["runs"] if out.is_file() else []


def save_runs(out: Path, runs: list[dict], **fields) -> None:
    """Write ``runs`` (and ``fields``, e.g. a summary) with the CPU they ran on."""
    out.write_text(json.dumps({"cpu": cpu_model(), **fields, "runs": runs}, indent=1) + "\n", encoding="utf-8")


def resumable_parser(doc: str, results: str, work: str | None = None) -> argparse.ArgumentParser:
    """The command line of a resumable benchmark: its description (``doc``'s first paragraph), ``--out`` (default
    ``bench/results/RESULTS``) and, given ``work``, ``--work`` (where its run folders go)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / results), help="the results file")
    if work is not None:
        parser.add_argument("--work", default=work, help="the run folders")
    return parser
