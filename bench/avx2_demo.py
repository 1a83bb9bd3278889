"""``make demo`` as a laptop without native bf16 runs it: PyTorch and oneDNN kernels limited to AVX2, and textclf
told the CPU has no AVX512-BF16/AMX (so ``precision=auto`` picks fp32). Prints the demo's output, then one line
with the total time and the test accuracy.

    HF_HUB_OFFLINE=1 python -m bench.avx2_demo --output /tmp/demo-avx2

Emulation is not a laptop: the cores, caches and clock are still this machine's, so the time is a lower bound for an
AVX2 CPU of the same generation and says nothing about an older one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# Before torch loads: its CPU kernels and oneDNN choose their instruction set at import time.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    import torch

    import textclf.runtime

    textclf.runtime.cpu_supports_bf16 = lambda: False  # as on a CPU without AVX512-BF16 or AMX
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    print(f"torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}", flush=True)
    start = time.perf_counter()
    report = quickstart.main(argv)
    print(f"demo with AVX2 kernels in fp32: {time.perf_counter() - start:.0f} s, test accuracy {report.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
