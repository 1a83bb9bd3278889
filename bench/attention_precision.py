"""How far the CPU training attention (textclf.train.speedups.cpu_dropout_attention) is from fp32 attention in bf16.

    python -m bench.attention_precision

Unit-normal queries, keys and values of shape [32, 12, 64, 32] (batch, heads, tokens, head size), no padding, a
dropout rate below 1/65536 so that nothing is dropped and both paths can be compared with exact attention:
textclf's written-out attention under bf16 autocast, and PyTorch's SDPA under bf16 autocast with dropout on,
which is the fallback it takes in training. Prints the mean absolute error of each against fp32 SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textclf.train.speedups import cpu_dropout_attention


def main() -> None:
    torch.manual_seed(0)
    query, key, value = (torch.randn(32, 12, 64, 32) for _ in range(3))
    exact = F.scaled_dot_product_attention(query, key, value)
    encoder_attention = nn.Module()
    encoder_attention.is_causal = False
    low = [t.bfloat16() for t in (query, key, value)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = cpu_dropout_attention(encoder_attention, *low, None, dropout=1e-9)
        fallback = F.scaled_dot_product_attention(*low, dropout_p=1e-9)
    print(f"textclf bf16 attention: mean abs error {(ours.float().transpose(1, 2) - exact).abs().mean():.5f}")
    print(f"SDPA bf16 fallback:     mean abs error {(fallback.float() - exact).abs().mean():.5f}")


if __name__ == "__main__":
    main()
