"""The end of a fine-tuning run: the best weights scored on dev and test, and what a person reads afterwards.

:func:`report_run` evaluates the best model on dev and test under error analysis and calibration
(:mod:`textclf.eval.analysis`), writes ``metrics.json`` and ``report.txt`` (:class:`~textclf.eval.analysis.RunReport`)
and a model card, ``README.md``, into ``best/`` and ``last/`` (:mod:`textclf.model.card`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..eval.analysis import RunAnalysis, RunReport
from ..eval.calibration import draw_safely
from ..eval.html_report import REPORT_FILE, write_html_report
from ..model import bundle
from ..model.card import CARD_FILE, language_of, model_card


def report_run(trainer) -> dict:
    """Score ``trainer``'s current (best) weights on dev and test and write the run's reports; returns metrics.json."""
    state, out = trainer.state, trainer.output_dir
    run_report = RunReport(best_step=state.best_step, global_step=state.global_step, metric=trainer.config.metric,
                           history=state.history)
    # Temperature fitted on dev, ECE, errors.csv and the plots (textclf.eval.analysis); labels are unchanged.
    analysis = RunAnalysis(trainer.label_map.names, trainer.task, trainer.config.calibrate)
    with trainer.clock.phase("final evaluation"):
        test = trainer._tokenize(trainer.data.test) if trainer.data.test else None
        for name, dataset in (("dev", trainer.dev_dataset), ("test", test)):
            if dataset is not None:
                report, note = analysis.evaluate(name, trainer.evaluate, dataset, getattr(trainer.data, name))
                run_report.add(name, report, f"== {name} ({report.num_rows} rows, best model from step "
                                             f"{state.best_step}) ==\n{report.format()}\n{note}")
    metrics = run_report.metrics
    # texts per split longer than max_length (windows: needing more than max_windows windows)
    metrics["truncated_rows"] = dict(trainer.truncated_rows)
    if trainer.runtime.is_main:
        best = out / "best"
        metrics["calibration"] = analysis.calibration
        with trainer.clock.phase("reports"):
            run_report.write(out)  # the numbers first: a picture that fails below must not cost them
            analysis.finish(out, best if best.is_dir() else None)  # errors.csv, the temperature, the pictures
            write_model_cards(trainer, metrics)
            # report.html: the same, to look at; drawn last, and like every picture it may fail with a warning only
            draw_safely(out / REPORT_FILE, lambda path: write_html_report(out, path), numbers_in="metrics.json, "
                        "report.txt and the run's pictures")
    return metrics


def write_model_cards(trainer, metrics: dict) -> None:
    """``README.md`` in ``best/`` (with the run's scores) and ``last/`` (scores belong to best/: none)."""
    train = trainer.data.train
    labels = Counter(label for row in train.labels for label in (row if isinstance(row, list) else [row]))
    data = {"language": language_of(train.texts), "train_rows": len(train), "source": train.source,
            "dataset": Path(train.source).parent.name if Path(train.source).suffix else Path(train.source).name,
            "train_sha256": trainer._data_fingerprint()["train_sha256"], "multi_label": trainer.task.multi_label,
            "label_counts": {name: labels.get(name, 0) for name in trainer.label_map.names}}
    for name, scores in (("best", metrics), ("last", {k: metrics.get(k) for k in ("truncated_rows",)})):
        folder = trainer.output_dir / name
        if folder.is_dir():
            card = model_card(f"{trainer.output_dir.name}/{name}", bundle.read_meta(folder), scores, data)
            bundle.write_atomically(folder / CARD_FILE, card.rstrip("\n"))
