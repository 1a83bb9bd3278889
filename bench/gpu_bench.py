"""GPU training throughput: textclf (fp16 and bf16) against the Hugging Face ``Trainer`` (fp16), one run.

The encoder is BERT-base sized, built from the bert-base-chinese config with random weights (throughput does
not depend on the weights), at max_length 128, on the ChnSentiCorp hotel reviews (long enough to fill 128
tokens). Same hyper-parameters as ``train_bench``. MFU is over the bf16 matmul peak measured in the same run.

    python -m bench.gpu_bench --data DIR      # DIR holds train/dev/test.csv (e.g. ../shared/data/chnsenticorp_htl)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.train_bench import RESULTS, ROOT, measure

SYSTEMS = {
    "textclf-fp16": ["--system", "textclf", "--precision", "fp16"],
    "textclf-bf16": ["--system", "textclf", "--precision", "bf16"],
    "peer-fp16": ["--system", "peer", "--precision", "fp16"],
    "peer-fp16-grouped": ["--system", "peer", "--precision", "fp16", "--group-by-length"],
}


def build_bert_base(folder: Path) -> Path:
    """A BERT-base encoder from the bert-base-chinese config and tokenizer, random weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = next(p for p in (ROOT / "examples" / "tokenizers" / "bert-base-chinese",
                              ROOT.parent / "shared" / "tokenizers" / "bert-base-chinese") if p.is_dir())
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(source)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def bf16_peak_tflops(size: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="chnsenticorp_htl")
    parser.add_argument("--model-dir", default="/tmp/textclf-bert-base-zh")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS / "gpu.json"))
    args = parser.parse_args(argv)

    model = build_bert_base(Path(args.model_dir))
    peak = bf16_peak_tflops()
    print(f"bf16 matmul peak: {peak:.0f} TFLOP/s", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    for round_index in range(args.rounds):
        order = list(SYSTEMS) if round_index % 2 == 0 else list(reversed(SYSTEMS))
        for system in order:
            result = measure(system, args.data, None, commands=SYSTEMS, model=str(model))
            result["mfu_vs_bf16_peak"] = result["train_tokens_per_s"] * result["flops_per_token"] / (peak * 1e12)
            runs[system].append(result)
            print(f"{system:>18}: {result['train_samples_per_s']:8.1f} samples/s {result['train_tokens_per_s']:9.0f} "
                  f"tokens/s MFU {result['mfu_vs_bf16_peak']:.1%} acc {result['test_accuracy']:.4f} "
                  f"predict {result['predict_samples_per_s']:.0f}/s", flush=True)
    best = {name: max(r["train_samples_per_s"] for r in results) for name, results in runs.items()}
    ratios = {f"{ours}/peer-fp16": best[ours] / best["peer-fp16"] for ours in ("textclf-fp16", "textclf-bf16")}
    ratios.update({f"{ours}/peer-fp16-grouped": best[ours] / best["peer-fp16-grouped"]
                   for ours in ("textclf-fp16", "textclf-bf16")})
    for name, ratio in ratios.items():
        print(f"{name}: x{ratio:.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"bf16_peak_tflops": peak, "runs": runs, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
