"""A first round of labels where one class was labelled once: few-shot (what the automatic recipe now picks) against
the fine-tuning it picked before, when few-shot refused a class with a single row.

TREC, 8 random training rows of every class but ABBR, which gets 1; seeds 0-2; bundled all-MiniLM-L6-v2; test
accuracy on the full test split.

    python -m bench.one_row_class_bench
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from bench.resumable import DATA, shared_data_missing
from bench.startup_bench import cpu_model

SETTINGS = {  # the fine-tuning the automatic recipe chose for these 41 rows before (frozen lower half)
    "few-shot (auto)": ({"recipe": "auto"}, {}),
    "fine-tune (auto before)": ({"recipe": "fine-tune", "epochs": 20, "lr": 1e-4, "batch_size": 16,
                                 "warmup_ratio": 0.1}, {"freeze_layers_below": 3}),
}


def main(argv: list[str] | None = None) -> int:
    import textclf
    from textclf.data.labels import LabelMap
    from textclf.data.readers import DatasetSplits, Split, read_split

    if shared_data_missing():
        return 0
    train, test = read_split(DATA / "trec" / "train.csv", "train"), read_split(DATA / "trec" / "test.csv", "test")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="textclf-one-row-") as work:
        for seed in (0, 1, 2):
            rng = random.Random(seed)
            rows = []
            for label in sorted(set(train.labels)):
                rows += rng.sample([i for i, y in enumerate(train.labels) if y == label], 1 if label == "ABBR" else 8)
            data = DatasetSplits(Split("train", [train.texts[i] for i in rows], [train.labels[i] for i in rows],
                                       "trec"), None, test, LabelMap.from_labels(train.labels))
            for name, (config, model) in SETTINGS.items():
                trainer = textclf.Trainer("minilm", data, Path(work), textclf.TrainConfig(seed=seed, **config),
                                          model_config=textclf.ModelConfig(**model), overwrite=True, progress=False)
                trainer.fit()
                results.setdefault(name, []).append(trainer.evaluate(test).accuracy)
    print(json.dumps({"cpu": cpu_model(), "accuracy": results,
                      "mean": {k: round(statistics.mean(v), 4) for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
