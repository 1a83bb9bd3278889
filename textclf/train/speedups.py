"""Training speed-ups that keep the maths: same model, same loss, same updates, less wasted time per step.

Three costs that have nothing to do with the maths take a large share of a small encoder's CPU step besides
the matmuls (measured on MiniLM, batch 32, bf16; docs/precision-and-gpus.md):

* **The word-embedding gradient.** PyTorch writes it as a dense ``[vocab, hidden]`` tensor (11.7M floats for
  MiniLM) that it allocates and zero-fills in every backward pass, only to add the few hundred rows the batch
  used. The allocation is large enough for the C allocator to hand it back to the kernel when it is freed, so
  every step page-faults 47 MB in again: 20-25 ms a step. :class:`SparseEmbeddingGradients` has the embedding
  emit a sparse gradient (its used rows) that the autograd engine adds, in place, into a dense buffer kept for
  the whole run and zeroed in place after each optimizer step (a warm 47 MB memset: about 1 ms). The optimizer
  and gradient clipping see the same dense gradient as before.
* **Dropout masks.** ``nn.Dropout`` draws one random number per element through the CPU generator's bernoulli
  kernel, about 1 ms per ``[32, 16, 384]`` activation. :class:`FastDropout` draws 16 random bits per element
  (four per 64-bit draw), the same keep probability to within 1/65536, for about a third of the time, and
  makes the mask with int16 arithmetic rather than as a boolean tensor, whose CPU kernels are not vectorised.
* **Attention under dropout.** With dropout on, PyTorch's SDPA cannot use its fused CPU kernel: its fallback
  upcasts bf16 inputs to fp32 and draws a bernoulli mask over every ``[batch, heads, length, length]`` probability
  tensor (6-8 ms of the mask alone per layer at 64 tokens). :func:`cpu_dropout_attention` writes attention out
  as Hugging Face's eager attention does, in the autocast precision (bf16 matmuls with fp32 accumulation, as on
  a GPU; softmax in fp32), with the 16-bit mask. This one changes rounding, not the maths: in fp32 it equals
  SDPA; in bf16 its mean error against fp32 attention is 0.0008 where SDPA's fallback has 0.0005 (64 tokens,
  unit-normal inputs).

:func:`training_speedups` applies them for the length of ``Trainer.fit`` and puts the model back as it was
afterwards (a dense embedding gradient, the original dropout modules, SDPA attention), so the model a user holds
after training behaves exactly as a model loaded from disk. ``TrainConfig.speedups=False`` turns them off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# 16 random bits per element: the keep probability is (65536 - round(p * 65536)) / 65536, within 1/65536 of 1 - p.
_MASK_LEVELS = 1 << 16


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training-mode mask costs about a third of the bernoulli kernel's.

    Same contract as ``nn.Dropout``: in training mode each element is zeroed with probability ``p`` and the
    survivors are scaled by ``1 / (1 - p)``; in eval mode (or with ``p == 0``) the input comes back unchanged.
    On other devices it is plain ``nn.Dropout`` (CUDA's generator is already fast). The masks come from the
    global CPU generator, so ``torch.manual_seed`` makes them reproducible.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return fast_dropout(x, self.p)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of a CPU tensor with 16-bit masks (see :class:`FastDropout`)."""
    dropped_levels = round(p * _MASK_LEVELS)  # a lane drops its element when, read unsigned, it is below this
    if dropped_levels >= _MASK_LEVELS:
        return x * 0
    if dropped_levels == 0:  # p below 1/131072: every lane keeps
        return x * (1.0 / (1.0 - p))
    count = x.numel()
    # One 64-bit draw gives four 16-bit lanes, uniform over [-32768, 32767] (the unsigned value minus 32768).
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
    lanes = draws.view(torch.int16)[:count].view(x.shape)
    # The mask as numbers, without a boolean tensor: PyTorch's CPU kernels that read booleans (where, mixed-dtype
    # multiplies) are not vectorised and took 1.4 ms per [32, 12, 60, 60] mask, against 0.15 ms for these int16
    # ops. Clamped to [edge - 1, edge] and shifted, a lane becomes 0 (dropped) or 1 (kept).
    edge = dropped_levels - _MASK_LEVELS // 2
    mask = lanes.clamp_(edge - 1, edge).sub_(edge - 1).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


def swap_dropout(model: nn.Module) -> list[tuple[nn.Module, str, nn.Dropout]]:
    """Replace every plain ``nn.Dropout`` in ``model`` by a :class:`FastDropout` of the same rate.

    Returns:
        ``(parent, attribute, original)`` for each swap, for :func:`restore_dropout`.
    """
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:  # subclasses may do more than drop: leave them alone
                replacement = FastDropout(child.p, child.inplace)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                swapped.append((parent, name, child))
    return swapped


def restore_dropout(swapped: list[tuple[nn.Module, str, nn.Dropout]]) -> None:
    """Put back the modules :func:`swap_dropout` replaced, in the train/eval mode the model is in now."""
    for parent, name, original in swapped:
        original.train(getattr(parent, name).training)
        setattr(parent, name, original)


ATTENTION = "textclf_cpu_dropout"


def cpu_dropout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """Hugging Face's SDPA attention, except in CPU training with attention dropout.

    There SDPA cannot use its fused kernel and falls back to the plain maths in fp32 with a bernoulli mask over
    the ``[batch, heads, length, length]`` probabilities: this writes the same maths out in the inputs' precision
    (bf16 under autocast, like Hugging Face's eager attention) with :func:`fast_dropout`'s mask (MiniLM at 64
    tokens, batch 32, bf16: 12 ms instead of 25 ms per layer, forward and backward).
    Shapes: ``query``/``key``/``value`` ``[batch, heads, length, head_dim]``; the mask, from Hugging Face's eager
    mask builder, is additive ``[batch, 1, length, length]`` (0 = attend, the dtype's minimum = masked), boolean
    (True = attend) when another builder made it, or None.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Hugging Face's SDPA path takes a module without is_causal for a causal one: so do we (and leave it to SDPA).
    plain_encoder_attention = (getattr(module, "is_causal", True) is False and kwargs.get("position_bias") is None
                               and query.shape[1] == key.shape[1])
    if dropout == 0.0 or query.device.type != "cpu" or not plain_encoder_attention:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        # An fp32 mask would promote the whole [batch, heads, length, length] sum to fp32; in bf16 its minimum
        # becomes -inf, which softmax handles (no row of an encoder's padding mask is masked throughout).
        scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                  else scores + attention_mask.to(scores.dtype))
    # Softmax in fp32, as Hugging Face's eager attention does: PyTorch's CPU softmax with a bf16 output is a slow
    # path (2.2 ms against 0.54 ms per [32, 12, 60, 60] scores).
    probabilities = fast_dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def use_cpu_dropout_attention(model: nn.Module) -> nn.Module | None:
    """Switch the encoder from SDPA to :func:`cpu_dropout_attention`; returns it (to switch back), or None.

    Only encoders that run on Hugging Face's attention interface with SDPA are switched; others keep their own.
    """
    encoder = _pretrained_model(model)
    can_switch = getattr(encoder, "_can_set_attn_implementation", None)
    if (encoder is None or getattr(encoder.config, "_attn_implementation", None) != "sdpa" or not callable(can_switch)
            or not can_switch()):
        return None
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, cpu_dropout_attention)
    # An additive float mask, built once per forward pass (eager attention's): a boolean one would be inverted and
    # applied with masked_fill in every layer (0.8 ms a layer at [32, 60, 60]). SDPA, which evaluation during fit
    # still runs, takes either.
    AttentionMaskInterface.register(ATTENTION, eager_mask)
    encoder.set_attn_implementation(ATTENTION)
    return encoder if encoder.config._attn_implementation == ATTENTION else None


class SparseEmbeddingGradients:
    """Word-embedding gradients accumulated, as sparse rows, into dense buffers kept for the whole run.

    An embedding that trains gets a dense, zeroed ``.grad`` and switches to sparse gradients, which the autograd
    engine adds into that buffer in place. Call :meth:`zero_grad` instead of ``optimizer.zero_grad`` so that
    the buffer is zeroed, not dropped. A frozen embedding (gradual unfreezing) keeps dense gradients and no
    buffer until it trains: AdamW skips a weight whose gradient is None but would decay one whose gradient is a
    zero tensor. Should a sparse gradient still land in an empty ``.grad`` (an override calling
    ``optimizer.zero_grad`` itself), a hook makes it dense at once, since AdamW and clipping take dense only.
    """

    def __init__(self, model: nn.Module):
        # An embedding tied to the output layer (an MLM head) gets a dense gradient from that layer every step
        # anyway: a sparse one on top would buy nothing.
        embedding = _input_embedding(model)
        usable = embedding is not None and not embedding.sparse and not _tied_to_output(model, embedding)
        self.embeddings = [embedding] if usable else []
        self._hooks: dict[nn.Embedding, torch.utils.hooks.RemovableHandle] = {}

    def enable(self) -> None:
        for module in self.embeddings:
            self._arm(module)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.zero_grad(set_to_none=True)``, except that the embedding buffers are zeroed and kept."""
        kept = [(module, module.weight.grad) for module in self.embeddings]
        optimizer.zero_grad(set_to_none=True)
        for module, grad in kept:
            if module.weight.requires_grad and grad is not None and not grad.is_sparse:
                module.weight.grad = grad.zero_()
            self._arm(module)

    def disable(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}
        for module in self.embeddings:
            module.sparse = False
            module.weight.grad = None  # the buffer goes, as optimizer.zero_grad(set_to_none=True) would drop it
        self.embeddings = []  # from now on zero_grad is the optimizer's own: nothing re-arms after the run

    def _arm(self, module: nn.Embedding) -> None:
        weight = module.weight
        module.sparse = weight.requires_grad  # a frozen embedding may thaw later: zero_grad arms it then
        if not weight.requires_grad:
            return
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        if module not in self._hooks:
            self._hooks[module] = weight.register_post_accumulate_grad_hook(_densify_grad)


def zero_grad(optimizer: torch.optim.Optimizer, sparse: SparseEmbeddingGradients | None) -> None:
    """``optimizer.zero_grad(set_to_none=True)``, keeping the embedding buffers when sparse gradients are on."""
    if sparse is not None:
        sparse.zero_grad(optimizer)
    else:
        optimizer.zero_grad(set_to_none=True)


def _tied_to_output(model: nn.Module, embedding: nn.Embedding) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    return output is not None and getattr(output, "weight", None) is embedding.weight


def _densify_grad(weight: torch.Tensor) -> None:
    if weight.grad is not None and weight.grad.is_sparse:
        weight.grad = weight.grad.to_dense()


def _pretrained_model(model: nn.Module) -> nn.Module | None:
    """The Hugging Face model: ``model`` itself (an MLM model) or a TextClassifier's ``encoder``; None otherwise."""
    for candidate in (model, getattr(model, "encoder", None)):
        if callable(getattr(candidate, "get_input_embeddings", None)) and hasattr(candidate, "config"):
            return candidate
    return None


def _input_embedding(model: nn.Module) -> nn.Embedding | None:
    """The token embedding of the Hugging Face model inside ``model``, or None."""
    pretrained = _pretrained_model(model)
    try:
        embedding = pretrained.get_input_embeddings() if pretrained is not None else None
    except NotImplementedError:  # a Hugging Face model that does not expose it
        return None
    return embedding if isinstance(embedding, nn.Embedding) else None


@contextlib.contextmanager
def training_speedups(model: nn.Module, enabled: bool, distributed: bool) -> Iterator[SparseEmbeddingGradients | None]:
    """Apply the speed-ups for the body of the ``with`` and undo them after, whatever happens inside.

    Yields the :class:`SparseEmbeddingGradients` whose ``zero_grad`` the optimizer step must use, or None when
    sparse gradients are off: with ``enabled=False``, and under DistributedDataParallel, whose gradient buckets
    expect dense gradients.
    """
    if not enabled:
        yield None
        return
    swapped = swap_dropout(model)
    switched_encoder = use_cpu_dropout_attention(model)
    sparse = None if distributed else SparseEmbeddingGradients(model)
    if sparse is not None:
        sparse.enable()
    try:
        yield sparse
    finally:
        if sparse is not None:
            sparse.disable()
        if switched_encoder is not None:
            switched_encoder.set_attn_implementation("sdpa")
        restore_dropout(swapped)
