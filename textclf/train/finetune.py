"""Fine-tuning control: layer-wise learning-rate decay, a separate head learning rate, gradual unfreezing.

* **Layer-wise learning-rate decay** (``TrainConfig.layer_lr_decay``, Howard & Ruder 2018; Clark et al. 2020):
  with ``L`` encoder layers, layer ``i`` (0 = bottom) trains at ``lr * decay^(L-1-i)`` and the embeddings at
  ``lr * decay^L``: the lower layers, which hold general language features, move least.
* **Head learning rate** (``TrainConfig.head_lr``): the freshly initialised head (and the encoder's pooler) often
  wants a larger rate than the pretrained body.
* **Gradual unfreezing** (``TrainConfig.unfreeze_every``): training starts with the layers below
  ``ModelConfig.freeze_layers_below`` frozen, and every ``unfreeze_every`` optimizer steps the top frozen layer
  thaws (the embeddings last). The frozen parameters are in the optimizer from the start (with
  ``requires_grad=False`` they get no gradient and AdamW skips them), so thawing needs no new optimizer, and since
  which layers train is a function of the optimizer step alone, a resumed run thaws exactly as the original did.

Every group keeps the house rule of :func:`textclf.train.optim.parameter_groups`: no weight decay on biases and
normalisation weights. The learning-rate schedule multiplies each group's own rate.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .callbacks import Callback
from .optim import build_adamw


def _no_decay_ids(model: nn.Module) -> set[int]:
    """Parameters never decayed: biases, normalisation weights, any 1-d tensor (the rule of optim.py)."""
    ids = set()
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)
    for module in model.modules():
        if isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
            ids.update(id(p) for p in module.parameters(recurse=False))
    for name, param in model.named_parameters():
        if name.endswith("bias") or param.ndim < 2:
            ids.add(id(param))
    return ids


def layerwise_parameter_groups(model, lr: float, weight_decay: float, layer_lr_decay: float | None = None,
                               head_lr: float | None = None, include_frozen: bool = False) -> list[dict]:
    """AdamW parameter groups with per-depth learning rates.

    Args:
        model: a :class:`~textclf.model.classifier.TextClassifier` (its ``encoder``, ``encoder_layers()`` and head).
        lr: the peak learning rate (that of the top encoder layer).
        weight_decay: decay of the weight matrices (biases and norm weights get none).
        layer_lr_decay: ``decay`` of the rule above; None or 1 gives every encoder layer ``lr``.
        head_lr: the learning rate of everything outside the encoder (the head) and of the encoder's pooler;
            None uses ``lr``.
        include_frozen: also hold parameters with ``requires_grad=False`` (for gradual unfreezing).

    Returns:
        Groups ``{"params", "lr", "weight_decay", "name"}``, top encoder layer first (so the first group's rate is
        the peak ``lr`` that the training log shows), empty groups left out.
    """
    decay = 1.0 if layer_lr_decay is None else float(layer_lr_decay)
    layers = model.encoder_layers()
    depth = len(layers)
    where: dict[int, tuple[str, float]] = {}
    for i, layer in enumerate(layers):
        for param in layer.parameters():
            where[id(param)] = (f"layer_{i}", lr * decay ** (depth - 1 - i))
    embeddings = getattr(model.encoder, "embeddings", None)
    for param in (embeddings.parameters() if embeddings is not None else ()):
        where[id(param)] = ("embeddings", lr * decay**depth)
    pooler = getattr(model.encoder, "pooler", None)
    for param in (pooler.parameters() if pooler is not None else ()):
        where[id(param)] = ("head", head_lr or lr)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    no_decay = _no_decay_ids(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name in [f"layer_{i}" for i in reversed(range(depth))] + ["embeddings", "encoder_other", "head"]:
        for decayed in (True, False):  # fixes the group order: top layer first
            groups[(name, decayed)] = {"params": [], "name": name if decayed else f"{name}.no_decay",
                                       "weight_decay": weight_decay if decayed else 0.0, "lr": None}
    for param in model.parameters():
        if not param.requires_grad and not include_frozen:
            continue
        default = ("encoder_other", lr) if id(param) in encoder_ids else ("head", head_lr or lr)
        name, group_lr = where.get(id(param), default)
        group = groups[(name, id(param) not in no_decay)]
        group["params"].append(param)
        group["lr"] = group_lr
    return [g for g in groups.values() if g["params"]]


def build_finetune_adamw(model, config, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`layerwise_parameter_groups` for ``config`` (a :class:`~textclf.TrainConfig`)."""
    groups = layerwise_parameter_groups(model, config.lr, config.weight_decay, config.layer_lr_decay,
                                        config.head_lr, include_frozen=config.unfreeze_every is not None)
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type in ("cpu", "cuda"))


def build_optimizer(model, config, device: torch.device) -> torch.optim.AdamW:
    """AdamW for ``config``: per-depth and head learning rates (and room for frozen layers to thaw later) when it
    asks for them, else one learning rate with no decay on biases and normalisation weights."""
    if uses_finetune_control(config):
        return build_finetune_adamw(model, config, device)
    return build_adamw(model, config.lr, config.weight_decay, device)


def uses_finetune_control(config) -> bool:
    """True when ``config`` asks for anything beyond one learning rate over the trainable parameters."""
    return config.layer_lr_decay is not None or config.head_lr is not None or config.unfreeze_every is not None


class GradualUnfreezing(Callback):
    """Which encoder layers train at each optimizer step: a callback the Trainer adds for ``train.unfreeze_every``.

    At step ``s`` the layers below ``start - s // every`` are frozen (with the embeddings while that number is
    ``>= 0``, as :meth:`TextClassifier.freeze_layers_below` does); once it drops below 0 everything trains. The
    layers are set when training begins (a resume thaws what the original run had thawed by then) and after every
    optimizer step.

    Args:
        model: the :class:`~textclf.model.classifier.TextClassifier`.
        start: ``ModelConfig.freeze_layers_below``.
        every: ``TrainConfig.unfreeze_every`` (optimizer steps).
    """

    def __init__(self, model, start: int, every: int):
        self.model, self.start, self.every = model, start, every
        self.layers = model.encoder_layers()
        self.embeddings = getattr(model.encoder, "embeddings", None)
        self.current: int | None = None

    @classmethod
    def from_config(cls, model, model_config, config, runtime) -> GradualUnfreezing | None:
        """The schedule of ``config.unfreeze_every``, or None when it is unset; errors name the fix."""
        if config.unfreeze_every is None:
            return None
        if model_config.freeze_layers_below is None:
            raise ConfigError("train.unfreeze_every: set model.freeze_layers_below too (the layers frozen at the "
                              "start, e.g. --freeze-layers-below 6 to start with the whole encoder frozen)")
        if runtime.distributed:
            raise ConfigError("train.unfreeze_every: gradual unfreezing is not supported under distributed training "
                              "(DDP fixes the trainable parameters when it wraps the model); train on one device or "
                              "use freeze_layers_below alone")
        return cls(model, model_config.freeze_layers_below, config.unfreeze_every)

    def frozen_below(self, step: int) -> int:
        """Layers below this index are frozen at optimizer step ``step``; -1 means nothing is."""
        return max(-1, self.start - step // self.every)

    def apply(self, step: int) -> bool:
        """Set ``requires_grad`` for optimizer step ``step``; True when this changed which layers train."""
        n = self.frozen_below(step)
        if n == self.current:
            return False
        self.current = n
        if self.embeddings is not None:
            self.embeddings.requires_grad_(n < 0)
        for i, layer in enumerate(self.layers):
            layer.requires_grad_(i >= n)
        return True

    def on_train_begin(self, trainer) -> None:
        self.apply(trainer.state.global_step)

    def on_step_end(self, trainer) -> None:
        step = trainer.state.global_step
        if self.apply(step):
            frozen = self.frozen_below(step)
            trainer.print(f"step {step}: " + (f"encoder layers below {frozen} and the embeddings stay frozen"
                                              if frozen >= 0 else "every layer trains now"))
