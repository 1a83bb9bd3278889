"""Seed ensembles: train one model per seed and combine them into a soft-voting ensemble folder.

``textclf train --seeds 1,2,3`` runs :func:`train_ensemble`. The ensemble itself (how it votes, its folder) is
:mod:`textclf.model.ensemble`; this module trains its members and reports on the result.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.readers import DatasetSplits, load_dataset
from ..errors import ConfigError, OutputDirError
from ..eval.analysis import RunAnalysis, RunReport
from ..model.ensemble import ENSEMBLE_DIR, save_ensemble
from ..train.trainer import Trainer


@dataclass
class EnsembleResult:
    """Summary of :func:`train_ensemble`: each member's and the ensemble's dev/test metrics."""

    output_dir: Path
    ensemble_dir: Path
    members: dict[int, dict]
    dev: dict | None
    test: dict | None


def train_ensemble(seeds: list[int], model: str = "minilm", data=None, output_dir: str | Path = "runs/ensemble",
                   config: TrainConfig | None = None, *, model_config: ModelConfig | None = None,
                   data_config: DataConfig | None = None, overwrite: bool = False, resume: str | None = None,
                   progress: bool = True, **trainer_kwargs) -> EnsembleResult:
    """Train one model per seed and combine them into a soft-voting ensemble folder.

    Args:
        seeds: one member per seed (``train.seed`` of that member; distinct seeds give distinct heads, dropout
            masks and data orders).
        model, data, config, model_config, data_config, progress, trainer_kwargs: as for
            :class:`~textclf.train.trainer.Trainer`; ``data`` is loaded once and shared by all members.
        output_dir: members go to ``output_dir/seed-N/``, the ensemble to ``output_dir/ensemble/``; the ensemble's
            metrics to ``output_dir/metrics.json`` and ``output_dir/report.txt``, with ``errors.csv``,
            ``reliability.png`` and ``confusion.png`` as for one run.
        overwrite: replace earlier runs in the members' folders.
        resume: ``"auto"`` skips members whose run finished and resumes the others from their checkpoints.

    Returns:
        An :class:`EnsembleResult`.
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: give at least two distinct seeds, e.g. 1,2,3; got {seeds}")
    config, data_config = config or TrainConfig(), data_config or DataConfig()
    output_dir = Path(output_dir)
    expected = {f"seed-{s}" for s in seeds} | {ENSEMBLE_DIR, "metrics.json", "report.txt", "errors.csv",
                                                 "reliability.png", "confusion.png"}
    if output_dir.is_dir() and not overwrite and not resume:
        foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in expected)
        if foreign or any((output_dir / f"seed-{s}").exists() for s in seeds):
            raise OutputDirError(f"output folder {output_dir} already holds {foreign or 'a run'}; pass --overwrite "
                                 "(overwrite=True) to replace it, --resume auto to continue it, or choose another "
                                 "folder")
    if not isinstance(data, DatasetSplits):
        data = load_dataset(data, config=data_config)
    members, member_dirs = {}, []
    for seed in seeds:
        member_out = output_dir / f"seed-{seed}"
        if resume == "auto" and (member_out / "metrics.json").is_file() and (member_out / "best").is_dir():
            metrics = json.loads((member_out / "metrics.json").read_text(encoding="utf-8"))
        else:
            trainer = Trainer(model, data, member_out, dataclasses.replace(config, seed=seed),
                              model_config=model_config, data_config=data_config, overwrite=overwrite,
                              progress=progress, **trainer_kwargs)
            trainer.print(f"ensemble member seed={seed} -> {member_out}")
            result = trainer.fit(resume=resume)
            if result.interrupted:
                raise KeyboardInterrupt
            metrics = {"dev": result.dev, "test": result.test}
            del trainer
        members[seed] = {k: metrics.get(k) for k in ("dev", "test")}
        member_dirs.append(member_out / "best")

    ensemble_dir = save_ensemble(member_dirs, output_dir / ENSEMBLE_DIR, [f"seed-{s}" for s in seeds],
                                 {"seeds": seeds})
    evaluator = Trainer.from_pretrained(ensemble_dir, device=config.device, precision=config.precision,
                                        eval_batch_size=config.eval_batch_size)
    analysis = RunAnalysis(evaluator.label_map.names, evaluator.task, config.calibrate)
    run_report = RunReport(seeds=seeds, members=members)
    for name, split in (("dev", data.dev), ("test", data.test)):
        if split is None:
            continue
        report, note = analysis.evaluate(name, evaluator.evaluate, split, split)
        member_lines = "\n".join(f"  seed {s}: accuracy {m[name]['accuracy']:.4f}, macro F1 {m[name]['macro_f1']:.4f}"
                                 for s, m in members.items() if m.get(name))
        run_report.add(name, report, f"== ensemble of {len(seeds)} on {name} ({report.num_rows} rows) ==\n"
                                     f"{report.format()}\n{note}\nmembers:\n{member_lines}")
    summary = run_report.metrics
    summary["calibration"] = analysis.calibration
    run_report.write(output_dir)  # the numbers before the pictures, which may fail (a warning each)
    analysis.finish(output_dir, ensemble_dir)
    return EnsembleResult(output_dir, ensemble_dir, members, summary.get("dev"), summary.get("test"))
