"""A custom classification head and a custom optimizer, by subclassing ``TextClassifier`` and ``Trainer``.

* ``MLPClassifier`` overrides :meth:`textclf.TextClassifier.build_head`: a two-layer MLP with GELU and dropout
  instead of the single linear layer, over mean-pooled token vectors.
* ``HeadLRTrainer`` overrides :meth:`textclf.Trainer.configure_optimizers`: the freshly initialised head learns
  ``--head-lr-scale`` times faster than the pretrained encoder (keeping AdamW's no-decay groups and the
  warmup + linear schedule).

A model with a custom head is saved in the usual folder layout, but its weights no longer match the Hugging Face
``...ForSequenceClassification`` layout, so it loads only with the class that built it. ``textclf.json`` records
that class (``"model_class": "/abs/path/examples/custom_head.py:MLPClassifier"``: this script runs as ``__main__``,
so by its file), and loading the folder asks you to name it, since that imports and runs this file:

    python examples/custom_head.py                       # MiniLM on TREC, ~2 epochs
    python examples/custom_head.py --data tests/data/tiny --max-steps 10

    textclf predict  --model runs/custom_head/best --model-class examples/custom_head.py:MLPClassifier "What is DNA?"
    textclf evaluate --model runs/custom_head/best --model-class examples/custom_head.py:MLPClassifier --data test.csv
    textclf serve    --model runs/custom_head/best --model-class examples/custom_head.py:MLPClassifier
    textclf export   --model runs/custom_head/best --model-class examples/custom_head.py:MLPClassifier --output onnx/
    textclf serve    --model onnx/                   # an export holds the whole graph: no class needed

In Python: ``textclf.Predictor.from_pretrained(folder, model_class=MLPClassifier)`` (or the same
``"file.py:Class"`` / ``"module:Class"`` string), ``MLPClassifier.from_pretrained(folder)`` for the bare model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import textclf
from textclf.model.classifier import load_tokenizer
from textclf.train.optim import build_scheduler, parameter_groups

ROOT = Path(__file__).resolve().parent.parent


class MLPClassifier(textclf.TextClassifier):
    """Encoder + mean pooling + ``Linear -> GELU -> Dropout -> Linear``."""

    def build_head(self, hidden_size: int, num_labels: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(hidden_size, num_labels),
        )


class HeadLRTrainer(textclf.Trainer):
    """AdamW with a larger learning rate for the head than for the pretrained encoder."""

    head_lr_scale = 10.0

    def configure_optimizers(self):
        groups = []
        for module, scale in ((self.model.encoder, 1.0), (self.model.head, self.head_lr_scale)):
            for group in parameter_groups(module, self.config.weight_decay):  # biases/LayerNorm: no decay
                if group["params"]:
                    groups.append({**group, "lr": self.config.lr * scale})
        optimizer = torch.optim.AdamW(groups)
        # The schedule multiplies every group's own lr by the same warmup/decay factor.
        scheduler = build_scheduler(optimizer, self.total_steps, self.config.warmup_ratio, self.config.schedule)
        return optimizer, scheduler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "trec"), help="data folder or file")
    parser.add_argument("--model", default="minilm", help="hub name, local folder or alias (default minilm)")
    parser.add_argument("--output", default="runs/custom_head", help="output folder, replaced on every run")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    parser.add_argument("--head-lr-scale", type=float, default=10.0, help="head learning rate = lr x this")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> textclf.EvalReport:
    args = parse_args(argv)
    data = textclf.load_dataset(args.data)

    # Build the subclass ourselves and hand the ready model to the Trainer (with its tokenizer).
    model = MLPClassifier.from_encoder(args.model, data.label_map, pooling="mean", dropout=0.1)
    config = textclf.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                 max_length=args.max_length, max_steps=args.max_steps)
    trainer = HeadLRTrainer(model=model, data=data, tokenizer=load_tokenizer(args.model), output_dir=args.output,
                            config=config, overwrite=True)
    trainer.head_lr_scale = args.head_lr_scale
    trainer.fit()
    report = trainer.evaluate(data.test)
    print(f"\n== test ({report.num_rows} rows), MLP head ==\n{report.format()}")

    # Reload naming the subclass (it rebuilds the same head; without it the folder refuses to load), then predict.
    best = Path(args.output) / "best"
    predictor = textclf.Predictor.from_pretrained(best, model_class=MLPClassifier, max_length=args.max_length)
    texts = data.test.texts[:3]
    for text, prediction in zip(texts, predictor.predict(texts)):
        print(f"{prediction.label:>13} {prediction.score:.2f}  {text}")
    return report


if __name__ == "__main__":
    main()
