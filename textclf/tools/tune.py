"""Time-boxed hyper-parameter search: ``textclf tune --budget 20m``.

Optuna (its TPE sampler and successive-halving pruner) proposes settings; textclf trains them. The search starts
from what ``--recipe auto`` would run (:mod:`textclf.train.recipes`) and varies the learning rate, the epochs, the
layers that train and, when few-shot training can run on the data, the recipe. Settings given explicitly (a flag,
``--config``, or a non-default field from Python) are held fixed.

* **Scoring.** With a dev split, every trial is one training run evaluated on dev after each epoch; the pruner
  stops trials that are behind their rungs (successive halving over epochs). Without one, every trial is K-fold
  cross-validation (``folds``): one run per fold, scored on the held-out fold, and the pruner stops after any fold
  where the running mean is behind. The best settings are then trained once on all rows.
* **Run folders.** Trial ``n`` is ``OUTPUT/trials/trial-n`` (a normal run folder; ``fold-k/`` inside for
  cross-validation). Trials that are not the best keep their config, metrics, logs and TensorBoard curves; their
  weights are removed to save disk. The best model is copied to ``OUTPUT/best``, the search written to
  ``OUTPUT/tune.json``.
* **Budget.** No trial starts unless the time left covers the shortest trial (measured before the search: a few
  optimizer steps, timed). Until a trial has finished, a trial's epochs are capped so that it ends within half of
  the time left, from the same measurement (a line says so when the cap is below the search space's). A trial
  still running when the budget ends stops at its next step: it is *cut*. A search always ends with the best model
  it has seen: with a dev split a cut trial's best checkpoint (it was evaluated on dev as it trained) competes with
  the finished trials on its dev score; cross-validated, a cut trial stands in only while no trial finished, with
  the model of its first fold (see :meth:`_Search._cross_validate`). A budget too small for one trial is an error
  that says how much one needs.
* **Resume.** The study lives in ``OUTPUT/tune.db`` (SQLite). Running the same command again continues it: the
  time already spent counts against the budget, and a trial cut short by a signal or a crash is tried again. The
  study records the settings and a fingerprint of the rows (texts and labels, in order) of every split; a search
  continued on other rows (relabelled after a label audit, say) is refused, since its trials and ``best/`` would
  come from two data sets. A study written before the fingerprint existed is continued with a warning.
* **Memory.** Each trial's trainer is dropped and the allocator emptied before the next one starts.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import outputs
from ..config import ModelConfig, TrainConfig
from ..data.readers import DatasetSplits, fold_keys, stratified_folds
from ..errors import ConfigError, OutputDirError
from ..train.callbacks import Callback
from ..train.objectives import OBJECTIVES
from ..train.run_folder import rows_digest
from ..train.trainer import Trainer

STUDY = "textclf-tune"
DB_FILE = "tune.db"
SUMMARY_FILE = "tune.json"


def parse_budget(text: str) -> float:
    """Seconds in ``"20m"``, ``"1h30m"``, ``"90s"``, ``"45"`` (seconds); an error names the accepted forms."""
    cleaned = str(text).strip().lower().replace(" ", "")
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", cleaned)
    if not cleaned or parts is None or not any(parts.groups()):
        raise ConfigError(f"--budget: expected a duration such as 20m, 1h30m, 90s or 600 (seconds), got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ConfigError(f"--budget must be positive, got {text!r}")
    return total


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        output_dir: the search folder (``best/``, ``trials/``, ``tune.json``, ``tune.db``).
        best_params: the settings of the best trial (``recipe``, ``lr``, ``epochs``, ``freeze_layers_below``...).
        best_value: its score (``metric`` on dev, or the cross-validated mean).
        metric: the selection metric.
        trials: one dict per trial: number, state, how (complete, pruned, cut, interrupted, failed), params, value,
            seconds, folder, and for a trial the budget cut, ``cut``: where it stopped and the model it left.
        spent_seconds: time spent over every session of this search.
        interrupted: a signal stopped the search; running the same command again continues it.
        best_trial: the number of the trial whose model ``OUTPUT/best`` holds.
        best_note: when that trial was cut by the budget, a line saying so: where it was cut, which of its models
            is ``OUTPUT/best`` and on what its score was measured (None for a trial that finished).
    """

    output_dir: Path
    best_params: dict | None
    best_value: float | None
    metric: str
    trials: list[dict]
    spent_seconds: float
    interrupted: bool = False
    best_trial: int | None = None
    best_note: str | None = None

    def format(self) -> str:
        lines = [f"{'trial':>5}  {'state':<9} {self.metric:>9} {'s':>6}  settings"]
        for t in self.trials:
            value = "" if t["value"] is None else f"{t['value']:.4f}"
            state = "cut" if t.get("how") == "cut" else t["state"]  # Optuna files a cut trial as pruned
            lines.append(f"{t['number']:>5}  {state:<9} {value:>9} {t['seconds']:>6.0f}  "
                         + ", ".join(f"{k}={_show(v)}" for k, v in t["params"].items()))
        if self.best_params is not None:
            lines.append(f"best: {self.metric} {self.best_value:.4f} with "
                         + ", ".join(f"{k}={_show(v)}" for k, v in self.best_params.items()))
        if self.best_note:
            lines.append(self.best_note)
        return "\n".join(lines)


def _show(value) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


class _Clock:
    """The search's spent time, kept in the study so that it adds up over every session that continues the search.

    It is written after each trial and, during one, at the first optimizer step, evaluation or epoch end that comes
    ``SAVE_EVERY`` seconds after the last write: a process killed mid-trial loses that much of the account and the
    time since (building a fold's model, scoring it). ``reserved`` is kept back from the trials for what comes
    after them (the final training on all rows after cross-validation).
    """

    SAVE_EVERY = 30.0

    def __init__(self, study, budget: float, started: float):
        self.study, self.budget, self.started = study, budget, started
        self.before = float(study.user_attrs.get("spent_seconds", 0.0))  # by the sessions before this one
        self.saved_at, self.reserved = started, 0.0

    @property
    def spent(self) -> float:
        return self.before + time.monotonic() - self.started

    @property
    def left(self) -> float:
        """Seconds the trials may still use."""
        return self.budget - self.spent - self.reserved

    def save(self, now: bool = True) -> None:
        if now or time.monotonic() - self.saved_at >= self.SAVE_EVERY:
            self.study.set_user_attr("spent_seconds", self.spent)
            self.saved_at = time.monotonic()


class _ClockKeeper(Callback):
    """Writes the search's clock down as the run goes (see :class:`_Clock`)."""

    def __init__(self, clock: _Clock):
        self.clock = clock

    def on_step_end(self, trainer) -> None:
        self.clock.save(now=False)

    def on_evaluate(self, trainer, report) -> None:
        self.clock.save(now=False)

    def on_epoch_end(self, trainer) -> None:
        self.clock.save(now=False)


class _Deadline(_ClockKeeper):
    """Keeps the search's clock and stops training at the next optimizer step once the budget is spent; ``cut`` then
    says where (step and epoch reached, of those planned). A run whose last step ends as the budget does is complete,
    not cut."""

    def __init__(self, clock: _Clock):
        super().__init__(clock)
        self.cut: dict | None = None

    def on_step_end(self, trainer) -> None:
        super().on_step_end(trainer)
        state = trainer.state
        if self.clock.left <= 0 and state.global_step < trainer.total_steps:
            trainer.should_stop = True
            epoch = state.epoch + state.batch_in_epoch / max(1, trainer.batches_per_epoch)
            self.cut = {"step": state.global_step, "steps": trainer.total_steps, "epoch": round(epoch, 1),
                        "epochs": trainer.config.epochs}


class _Rungs(_Deadline):
    """Reports each dev evaluation to the trial and stops training when the pruner says so (or the budget ends)."""

    def __init__(self, trial, metric: str, clock: _Clock):
        super().__init__(clock)
        self.trial, self.metric = trial, metric
        self.evaluations, self.pruned = 0, False

    def on_evaluate(self, trainer, report) -> None:
        super().on_evaluate(trainer, report)
        self.evaluations += 1
        self.trial.report(float(report[self.metric]), self.evaluations)
        finished = trainer.state.global_step >= trainer.total_steps  # a finished run is complete, never pruned
        if not finished and self.trial.should_prune():
            self.pruned = trainer.should_stop = True


class _Search:
    """One search: the data, the base settings, the Optuna study and the trial runner."""

    def __init__(self, data, output_dir: Path, model_config: ModelConfig, train_config: TrainConfig,
                 data_config, explicit_train: set[str], explicit_model: set[str], folds: int, max_trials: int | None,
                 printer):
        from ..model.classifier import load_tokenizer
        from ..train.recipes import resolve_auto

        self.data, self.out, self.folds, self.max_trials = data, output_dir, folds, max_trials
        self.data_config, self.print = data_config, printer or (lambda *a, **k: None)
        self.explicit_train, self.explicit_model = explicit_train, explicit_model
        # The base of every trial: what --recipe auto would run, with the explicit settings kept.
        chosen = resolve_auto(data, load_tokenizer(model_config.name), model_config, train_config,
                              explicit_train=explicit_train, explicit_model=explicit_model)
        self.base_train, self.base_model = chosen.train, chosen.model
        self.metric = train_config.metric
        self.direction = "minimize" if self.metric == "loss" else "maximize"
        self.cross_validate = data.dev is None
        if self.cross_validate:  # refused before anything is trained
            check_folds(data.train, folds)
        # the recipes a trial may pick: each objective says whether it is searched and whether it can train this data
        self.recipes = _searched_recipes(data, model_config.name, self.base_train)
        self.layers = _encoder_layers(model_config.name)
        self.cost: _TrialCost | None = None  # measured by tune() before the first trial (_measure_trial)

    # ---- the search space ------------------------------------------------------------------------------------------

    def configs(self, trial, most_epochs: int | None = None) -> tuple[TrainConfig, ModelConfig]:
        """The settings of ``trial``: the base with the searched fields replaced (explicit fields never are);
        ``most_epochs`` lowers the top of the epochs' range (:meth:`epochs_cap`)."""
        train, model = {}, {}
        if "recipe" not in self.explicit_train and len(self.recipes) > 1:
            train["recipe"] = trial.suggest_categorical("recipe", self.recipes)
        recipe = train.get("recipe", self.base_train.recipe)
        if recipe != self.base_train.recipe and "batch_size" not in self.explicit_train:
            train["batch_size"] = 16  # the base's batch size was chosen for its own recipe
        objective = OBJECTIVES[recipe]
        if "lr" not in self.explicit_train:
            train["lr"] = trial.suggest_float("lr", *objective.lr_range, log=True)
        if "epochs" not in self.explicit_train:
            most = self.most_epochs(recipe)
            train["epochs"] = trial.suggest_int("epochs", 1, min(most, most_epochs or most))
        if "freeze_layers_below" not in self.explicit_model and self.layers > 1:
            frozen = trial.suggest_int("freeze_layers_below", 0, self.layers - 1)
            model["freeze_layers_below"] = frozen or None
        return dataclasses.replace(self.base_train, **train), dataclasses.replace(self.base_model, **model)

    def most_epochs(self, recipe: str) -> int:
        """The top of the epochs' range, as the recipe's objective declares it (few-shot: few epochs; fine-tuning: up
        to twice the base's)."""
        return OBJECTIVES[recipe].most_epochs(self.base_train)

    def epochs_cap(self, study, clock: _Clock, number: int) -> int | None:
        """While no trial has a model (the first trial, or after failures), the most epochs that fit half of the
        time left, from the measured cost: a first trial drawn at the top of the range would otherwise run past the
        budget and leave nothing finished. Later trials are not capped (a cut trial leaves its model, and TPE
        should be free to try long runs once there is a model to fall back on). Says so when the cap binds, or
        when held-fixed epochs will not fit."""
        if self.cost is None or _best(study, self) is not None:
            return None
        left = clock.left
        if "epochs" in self.explicit_train:
            needed = self.cost.seconds(self.base_train.epochs)
            if needed > left:
                self.print(f"budget: trial {number} trains the {self.base_train.epochs:g} epochs you gave, about "
                           f"{_duration(needed)}, and {_duration(left)} is left: the budget will cut it, and the "
                           "model it has reached by then is kept")
            return None
        cap = self.cost.epochs_within(left / 2)
        searched = self.recipes if "recipe" not in self.explicit_train else [self.base_train.recipe]
        most = max(map(self.most_epochs, searched))
        if cap < most:
            per = " per fold" if self.cross_validate else ""
            self.print(f"budget: trial {number} gets at most {cap} epochs (the search goes up to {most}), so that it "
                       f"ends within half of the {_duration(left)} left (measured: about "
                       f"{_duration(self.cost.build + self.cost.epoch)} for one epoch{per}, building the model "
                       "included)")
        return cap

    # ---- one trial --------------------------------------------------------------------------------------------------

    def run_trial(self, trial, clock: _Clock) -> tuple[float | None, str]:
        """Train (and score) one trial; returns ``(value, how)`` with how one of complete, pruned, cut, interrupted.
        A cut trial's value is that of the model it leaves, described in its ``cut`` user attribute."""
        train, model = self.configs(trial, self.epochs_cap(trial.study, clock, trial.number))
        folder = self.out / "trials" / f"trial-{trial.number:03d}"
        if not self.cross_validate:
            rungs = _Rungs(trial, self.metric, clock)
            result, _ = self._train(folder, self.data, train, model, [rungs])
            if result.interrupted:
                return None, "interrupted"
            if rungs.pruned:
                return result.best_metric, "pruned"
            if rungs.cut:
                return self._cut_on_dev(trial, folder, rungs.cut, result), "cut"
            return result.best_metric, "complete"
        return self._cross_validate(trial, folder, train, model, clock)

    def _cut_on_dev(self, trial, folder: Path, cut: dict, result) -> float | None:
        """What a trial the budget cut leaves: it was evaluated on dev as it trained, so its best checkpoint
        (``best/``) is a model scored like any finished trial's. Cut before its first evaluation, it has none; its
        final weights (``last/``) were scored on dev as the run ended, and are what it leaves."""
        if result.best_step is not None and result.best_metric is not None and (folder / "best").is_dir():
            model, value, step = "best", result.best_metric, result.best_step
        elif result.dev and result.dev.get(self.metric) is not None and (folder / "last").is_dir():
            model, value, step = "last", float(result.dev[self.metric]), result.global_step
        else:  # no model and no score (a run that failed to score): where it was cut is still recorded
            model, value, step = None, None, None
        trial.set_user_attr("cut", {**cut, "model": model, "value": value, "model_step": step})
        return value

    def _cross_validate(self, trial, folder: Path, train: TrainConfig, model: ModelConfig, clock: _Clock):
        """One run per fold, scored on its held-out fold; the pruner may stop after any fold.

        A trial the budget cuts is scored by the mean over its finished folds (the cut fold's weights are not these
        settings' model: they stopped early), or by the cut fold's own score when none finished. Its settings are
        not trained on all rows: that takes about a fold run's time again, and the budget is spent. What it leaves
        is the model of fold 1, kept until the trial ends for this: trained on (folds - 1) / folds of the rows and
        scored on the rest, an honest model with an honest score."""
        scores = []
        for k, (train_rows, held_out) in enumerate(self.fold_splits, 1):
            deadline = _Deadline(clock)  # the only callback: a fold reports once, below, with the running mean
            # No dev split in the fold run: its final weights are scored on the held-out fold (as crossval.py does),
            # so no held-out row picks a checkpoint.
            fold = DatasetSplits(train_rows, None, None, self.data.label_map)
            result, score = self._train(folder / f"fold-{k}", fold, train, model, [deadline], score_on=held_out,
                                        keep=k == 1)
            if result.interrupted:
                return None, "interrupted"
            if deadline.cut:
                value = sum(scores) / len(scores) if scores else score
                first_train, first_held_out = self.fold_splits[0]
                trial.set_user_attr("cut", {**deadline.cut, "fold": k, "folds": self.folds, "value": value,
                                            "finished_folds": len(scores), "model": "fold-1/last",
                                            "model_score": scores[0] if scores else score,
                                            "model_rows": len(first_train), "held_out_rows": len(first_held_out)})
                trial.report(value, k)
                return value, "cut"
            scores.append(score)
            mean = sum(scores) / len(scores)
            trial.report(mean, k)
            if k < self.folds and trial.should_prune():
                drop_weights(folder)
                return mean, "pruned"
        drop_weights(folder)  # fold 1's model: the best settings are trained again on all rows
        return sum(scores) / len(scores), "complete"

    @property
    def fold_splits(self):
        if not hasattr(self, "_folds"):
            self._folds = stratified_folds(self.data.train, self.folds, self.base_train.seed, ("train", "dev"))
        return self._folds

    def _train(self, folder: Path, data, train: TrainConfig, model: ModelConfig, callbacks, score_on=None,
               keep: bool = False):
        """One training run in ``folder``; with ``score_on`` (a labelled split) also its final weights' ``metric``
        there, after which the run's model folders are removed (only the score is needed) unless ``keep``."""
        # One line per trial is said by the search; the data's notes were said once, by the probe.
        trainer = SearchTrainer(printer=None, model=model.name, data=data, output_dir=folder, config=train,
                                model_config=model, data_config=self.data_config, callbacks=callbacks)
        try:
            result = trainer.fit()
            score = None if score_on is None or result.interrupted else float(trainer.evaluate(score_on)[self.metric])
            return result, score
        finally:
            del trainer
            release_memory()
            if score_on is not None and not keep:
                drop_weights(folder)


class SearchTrainer(Trainer):
    """A :class:`~textclf.train.trainer.Trainer` with no progress bar whose notes go to ``printer`` (None: nowhere)
    instead of the terminal: a search of many trials speaks through its own lines."""

    def __init__(self, *, printer=None, **kwargs):
        self._printer = printer  # set first: the constructor already says the data's notes
        super().__init__(progress=False, **kwargs)

    def print(self, message: str, file=None) -> None:
        if self._printer is not None:
            self._printer(message)


def release_memory() -> None:
    """Drop what the finished trial held (its model, optimizer and data) before the next one is built."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def drop_weights(folder: Path) -> None:
    """Keep a trial's config, metrics, logs and curves; remove its model folders and checkpoints (its folds' too)."""
    for run in (Path(folder), *sorted(Path(folder).glob("fold-*"))):
        for name in ("best", "last", "checkpoints"):
            shutil.rmtree(run / name, ignore_errors=True)


def check_folds(split, k: int) -> None:
    """Refuse cross-validated trials when a class has fewer than ``k`` training rows: a search compares settings
    on the folds, and folds that miss a class would compare them on different tasks."""
    smallest = min(Counter(fold_keys(split)).values())
    if smallest < k:
        raise ConfigError(f"tune: with no dev split every trial is {k}-fold cross-validation, and a class has only "
                          f"{smallest} training rows; give a dev split (--dev FILE) or fewer folds (--folds "
                          f"{max(2, smallest)})" if smallest >= 2 else
                          f"tune: with no dev split every trial is cross-validated, and a class has only {smallest} "
                          "training row; give a dev split (--dev FILE)")


def _searched_recipes(data, model_name: str, base: TrainConfig) -> list[str]:
    """The recipes a trial may pick: the searched objectives that can train ``data`` (each says so itself)."""
    from ..train.recipes import is_sentence_encoder, label_shape

    shape = label_shape(data.train.labels, data.label_map.multi_label, is_sentence_encoder(model_name))
    return [name for name, objective in OBJECTIVES.items()
            if objective.searched and objective.refusal(shape, base) is None]


def _encoder_layers(model_name: str) -> int:
    from transformers import AutoConfig

    from ..model.classifier import resolve_model_name

    try:
        return int(getattr(AutoConfig.from_pretrained(resolve_model_name(model_name)), "num_hidden_layers", 0))
    except (OSError, ValueError):
        return 0


# ============================================================================================== the search


def tune(data, output_dir: str | Path, budget: float | str, model_config: ModelConfig | None = None,
         train_config: TrainConfig | None = None, data_config=None, *, explicit_train: set[str] | None = None,
         explicit_model: set[str] | None = None, folds: int = 3, max_trials: int | None = None,
         overwrite: bool = False, printer=print) -> TuneResult:
    """Search settings for ``data`` within ``budget`` (seconds, or a duration such as ``"20m"``).

    Args:
        data: a :class:`~textclf.data.readers.DatasetSplits` (see :func:`textclf.load_dataset`).
        output_dir: the search folder; an existing search there is continued (``overwrite`` starts afresh).
        budget: wall-clock time for the whole search, over all the sessions that continue it.
        model_config, train_config: the base settings (``model_config.name`` is the encoder); fields named in
            ``explicit_*`` (default: those that differ from their defaults) are held fixed.
        folds: cross-validation folds per trial when ``data`` has no dev split.
        max_trials: stop after this many finished trials even if time is left.
        printer: where one line per trial goes (None: nowhere).

    Returns:
        A :class:`TuneResult` (also written to ``OUTPUT/tune.json``); the best model is in ``OUTPUT/best``.
    """
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("textclf tune searches with Optuna, which is not installed: pip install "
                          "'textclf[tune]' (or pip install optuna)") from None
    from ..train.recipes import explicit_fields

    seconds = parse_budget(budget) if isinstance(budget, str) else float(budget)
    model_config, train_config = model_config or ModelConfig(), train_config or TrainConfig()
    if folds < 2:
        raise ConfigError(f"tune: folds must be >= 2, got {folds}")
    explicit_train = explicit_fields(train_config) if explicit_train is None else set(explicit_train)
    explicit_model = explicit_fields(model_config) if explicit_model is None else set(explicit_model)
    if train_config.recipe == "auto":  # "auto" is where the search starts, not a recipe to hold fixed
        explicit_train.discard("recipe")
    out = outputs.check_output_folder(Path(output_dir))
    out.mkdir(parents=True, exist_ok=True)
    with outputs.locked(out):  # one process per search folder
        started = time.monotonic()
        settings = _settings_key(data, model_config, train_config, explicit_train, explicit_model, folds)
        rows = data_fingerprint(data)
        _prepare_folder(out, settings, rows, overwrite)
        search = _Search(data, out, model_config, train_config, data_config, explicit_train,
                         explicit_model, folds, max_trials, printer)
        study = _open_study(out, search, train_config.seed, settings, rows)
        search.cost = _measure_trial(search)
        shortest = search.cost.seconds(1)
        clock = _Clock(study, seconds, started)
        try:
            clock.reserved = _final_training_seconds(search, study)
            spent = clock.spent
            if clock.left < shortest and _best(study, search) is None:
                raise ConfigError(
                    f"--budget {_duration(seconds)}: one trial takes about {_duration(shortest)} here (measured: "
                    f"building the model and timing a few optimizer steps)"
                    + (f", and {_duration(spent)} of the budget is spent already" if spent > 0.5 * seconds else "")
                    + f"; give --budget {_duration(math.ceil(spent + 1.5 * shortest))} or more")
            interrupted = _run_trials(search, study, clock, shortest)
            if _best(study, search) is not None:
                interrupted = _install_best(search, study, out, clock) or interrupted
        finally:  # an error or a signal: the time spent still counts when the search continues
            clock.save()
        result = _summarise(study, search, clock.spent, interrupted)
        outputs.write_file_atomically(out / SUMMARY_FILE, json.dumps(
            dataclasses.asdict(result) | {"output_dir": str(out)}, indent=1, default=str) + "\n")
    return result


def _open_study(out: Path, search: _Search, seed: int, settings: str, rows: dict):
    """The study in ``OUTPUT/tune.db``, created or continued; a trial a killed process left running is failed and
    queued again with its settings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / DB_FILE).resolve()}"
    try:
        earlier = len(optuna.load_study(study_name=STUDY, storage=storage).trials) if (out / DB_FILE).is_file() else 0
        study = optuna.create_study(
            study_name=STUDY, storage=storage, load_if_exists=True, direction=search.direction,
            # seeded past the trials drawn already: a continued search draws new settings, not the first ones again
            sampler=optuna.samplers.TPESampler(seed=(seed + earlier) % 2**32),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
        study.set_user_attr("settings", settings)
        study.set_user_attr("data", rows)  # from now on every session of this search is checked against it
    except Exception as exc:  # noqa: BLE001 -- SQLAlchemy's and SQLite's errors (read-only, disk full, locked)
        raise _storage_error(out, exc) from None
    for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        params = trial.params or trial.system_attrs.get("fixed_params")  # drawn, or queued and not drawn yet
        if params:
            study.enqueue_trial(params)
    return study


# Trials in a row that fail with an error before any trial finished: then the error is the data's or the settings'
# rather than one trial's (a learning rate that diverges), and it is raised.
MAX_FAILURES_BEFORE_ANY_RESULT = 3


def _run_trials(search: _Search, study, clock: _Clock, shortest: float) -> bool:
    """Ask, train, tell until the budget (or ``max_trials``) is used; returns whether a signal interrupted the
    search."""
    import optuna
    import torch

    from ..errors import TextclfError

    states = optuna.trial.TrialState
    failures = 0
    while True:
        finished = len(study.get_trials(states=(states.COMPLETE, states.PRUNED)))
        if clock.left < shortest or (search.max_trials is not None and finished >= search.max_trials):
            return False
        trial = study.ask()
        trial_start = time.monotonic()
        try:
            value, how = search.run_trial(trial, clock)
        except (TextclfError, torch.OutOfMemoryError) as exc:  # this trial's settings; the search goes on
            value, how = None, "failed"
            search.print(f"trial {trial.number}: failed: {str(exc).splitlines()[0]}")
            failures += 1
            if failures >= MAX_FAILURES_BEFORE_ANY_RESULT and not finished:
                study.tell(trial, state=states.FAIL)
                raise
        clock.save()
        trial.set_user_attr("seconds", time.monotonic() - trial_start)
        trial.set_user_attr("how", how)
        if how == "interrupted":
            study.tell(trial, state=states.FAIL)
            study.enqueue_trial(trial.params)  # tried again when the search continues
            return True
        if how == "complete" and value is not None and math.isfinite(value):
            study.tell(trial, value)
        elif how in ("pruned", "cut"):  # stopped early: a lower bound for the sampler (a cut one's model: _best)
            study.tell(trial, state=states.PRUNED)
        else:
            study.tell(trial, state=states.FAIL)
        if how != "failed":
            _say_trial(search, study, trial.number, value, how)
        _keep_weights_of_best(study, search)
        clock.reserved = _final_training_seconds(search, study)


def _final_training_seconds(search: _Search, study) -> float:
    """The time to keep for training the best settings on all rows after a cross-validated search: a trial trains
    ``folds`` runs on (folds - 1) / folds of the rows each, about (folds - 1) runs on all of them."""
    best = _best(study, search)
    # A cut trial is never trained again (its model is a fold's; see _Search._cross_validate): nothing to keep.
    if not search.cross_validate or best is None or best.cut or study.user_attrs.get("installed") == best.number:
        return 0.0
    return float(study.trials[best.number].user_attrs.get("seconds", 0.0)) / (search.folds - 1)


def _duration(seconds: float) -> str:
    seconds = int(math.ceil(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _settings_key(data, model_config, train_config, explicit_train, explicit_model, folds) -> str:
    """What a continued search must share with the one in the folder."""
    given = {"model": {k: getattr(model_config, k) for k in sorted(explicit_model | {"name"})},
             "train": {k: getattr(train_config, k) for k in sorted(explicit_train)},
             "rows": [len(data.train), len(data.dev) if data.dev else 0], "labels": data.label_map.names,
             "folds": folds if data.dev is None else None}
    return json.dumps(given, sort_keys=True, default=str)


def data_fingerprint(data) -> dict:
    """What a continued search must have searched on: for each split a trial reads (train, dev and test, whose
    scores every trial's metrics.json holds), its row count and the digest of its texts and labels, in order."""
    return {name: {"rows": len(split), "sha256": rows_digest(split.texts, split.labels)}
            for name, split in (("train", data.train), ("dev", data.dev), ("test", data.test)) if split is not None}


def data_differences(saved: dict, now: dict) -> list[str]:
    """How the rows of the stored search (``saved``) differ from this session's (``now``), one phrase per split."""
    def rows(entry) -> str:
        return "none" if not isinstance(entry, dict) else f"{entry.get('rows')} rows"

    phrases = []
    for name in ("train", "dev", "test"):
        then, current = saved.get(name), now.get(name)
        if then == current:
            continue
        if isinstance(then, dict) and current is not None and then.get("rows") == current["rows"]:
            phrases.append(f"{name}: the same {current['rows']} rows, but other texts or labels")
        else:
            phrases.append(f"{name}: {rows(then)} -> {rows(current)}")
    return phrases


def _storage_error(out: Path, exc: Exception) -> OutputDirError:
    first_line = str(exc).splitlines()[0] if str(exc) else "no details"
    return OutputDirError(f"{out / DB_FILE}: cannot read the search stored there ({type(exc).__name__}: "
                          f"{first_line}); pass --overwrite to start afresh, or choose another --output")


def _prepare_folder(out: Path, settings: str, rows: dict, overwrite: bool) -> None:
    """Claim a new search folder, replace one (``overwrite``), or check that the search in it may be continued with
    these ``settings`` (:func:`_settings_key`) and ``rows`` (:func:`data_fingerprint`); nothing is written before."""
    outputs.check_output_folder(out)
    database = out / DB_FILE
    if database.exists() and not database.is_file():
        # Checked before --overwrite: textclf writes tune.db as a file, so a folder (or a device) there is not its
        # own, and replacing the search folder would delete it.
        what = "a folder" if database.is_dir() else "not a regular file"
        raise OutputDirError(f"{database} is {what}, not the search's SQLite database (a file textclf writes there); "
                             "move it out of the way, or choose another --output")
    if not outputs.has_content(out):
        outputs.claim(out, outputs.TUNE)
        return
    outputs.check_replaceable(out, outputs.TUNE)
    if overwrite:
        outputs.replace(out, outputs.TUNE)
        outputs.claim(out, outputs.TUNE)
        return
    if database.is_file():
        import optuna

        try:
            attrs = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{database.resolve()}").user_attrs
        except Exception as exc:  # noqa: BLE001 -- any unreadable study: refuse rather than guess
            raise _storage_error(out, exc) from None
        saved = attrs.get("data")
        differences = data_differences(saved, rows) if isinstance(saved, dict) else []
        if differences:  # said before the settings: "other data" alone would not say which split changed
            raise OutputDirError(
                f"output folder {out} holds a search on other data ({'; '.join(differences)}); continuing it would "
                "rank trials trained on different rows and could return the old best model. Pass --overwrite to "
                "start afresh on this data, or choose another --output")
        if attrs.get("settings") not in (None, settings):
            raise OutputDirError(f"output folder {out} holds a search with other data or settings; run the same "
                                 "command to continue it, pass --overwrite to start afresh, or choose another "
                                 "--output")
        if saved is None and attrs.get("settings") is not None:
            # A study from before the fingerprint: its row counts and label names matched (the settings), its texts
            # and labels cannot be checked. Refusing would throw its spent budget away for every search continued
            # across the upgrade; the warning names the risk, and the fingerprint is recorded from now on.
            warnings.warn(f"{database} was written before textclf recorded the rows a search runs on, so it cannot "
                          "check that its trials saw these texts and labels (row counts and label names match); if "
                          "the data changed since (relabelled rows), pass --overwrite to start afresh", stacklevel=2)


@dataclass
class _TrialCost:
    """What a trial costs at the base settings, measured: ``runs`` trainings (one, or one per fold), each building
    its model in ``build`` seconds and training ``epoch`` seconds an epoch (evaluation and saving included)."""

    build: float
    epoch: float
    runs: int

    def seconds(self, epochs: float) -> float:
        return self.runs * (self.build + epochs * self.epoch)

    def epochs_within(self, seconds: float) -> int:
        """The most whole epochs a trial can train in ``seconds`` (at least one: the shortest trial)."""
        return max(1, math.floor((seconds / self.runs - self.build) / max(self.epoch, 1e-9)))


def _measure_trial(search: _Search) -> _TrialCost:
    """The cost of a trial at the base settings, from a measurement: build the model, time a few optimizer steps
    (:meth:`Trainer.find_lr` at a harmless rate; it restores everything), scale to an epoch's steps."""
    # The probe is built first, at the base settings and on the user's splits: it says the data's notes (truncation,
    # ...) for the whole search. A cross-validated trial trains on (folds - 1) / folds of the rows, k times.
    data, share = search.data, 1.0
    if search.cross_validate:
        data, share = DatasetSplits(search.data.train, None, None, search.data.label_map), 1 - 1 / search.folds
    start = time.monotonic()
    trainer = SearchTrainer(printer=search.print, model=search.base_model.name, data=data,
                            output_dir=search.out / "trials" / "probe",
                            config=dataclasses.replace(search.base_train, epochs=1), model_config=search.base_model,
                            data_config=search.data_config)
    built = time.monotonic() - start
    # The first steps pay one-off costs (kernel selection, allocator growth) and would double the estimate on a
    # CPU: five untimed steps, then five timed ones.
    trainer.find_lr(start_lr=1e-9, end_lr=2e-9, steps=5)
    start = time.monotonic()
    trainer.find_lr(start_lr=1e-9, end_lr=2e-9, steps=5)
    per_step = (time.monotonic() - start) / 5
    steps = trainer.total_steps * share  # one epoch at the base settings: the shortest trial the space holds
    del trainer
    release_memory()
    return _TrialCost(build=built, epoch=steps * per_step * 1.2,  # 20% for evaluation and saving
                      runs=search.folds if search.cross_validate else 1)


def _say_trial(search: _Search, study, number: int, value, how: str) -> None:
    trial = study.trials[number]
    best = _best(study, search)
    shown = "-" if value is None else f"{value:.4f}"
    cut = trial.user_attrs.get("cut") if how == "cut" else None
    where = f" at epoch {cut['epoch']:g} of {cut['epochs']:g}" if cut else ""
    where += f" in fold {cut['fold']} of {cut['folds']}" if cut and "fold" in cut else ""
    search.print(f"trial {number}: {how}{where}, {search.metric} {shown} "
                 f"({', '.join(f'{k}={_show(v)}' for k, v in trial.params.items())})"
                 + (f"; best so far trial {best.number} ({best.value:.4f})" if best is not None else ""))


@dataclass
class _Best:
    """The trial whose model ``OUTPUT/best`` holds (or will): its number, score and settings, and for a trial the
    budget cut, its ``cut`` record (where it stopped, which model it left, on what that was scored)."""

    number: int
    value: float
    params: dict
    cut: dict | None = None


def _best(study, search: _Search) -> _Best | None:
    """The best model the search has seen. Finished trials compete on their score. With a dev split a trial the
    budget cut competes too, on its best checkpoint's dev score: the same evaluation on the same rows as a finished
    trial's best checkpoint, so choosing it is as fair; a tie goes to the finished trial. Cross-validated, a cut
    trial stands in only while no trial finished: its score is over fewer folds, its model saw part of the rows,
    and a finished trial's settings are trained on all of them."""
    import optuna

    states = optuna.trial.TrialState
    ranked = [(t.value, 1, t, None) for t in study.get_trials(deepcopy=False, states=(states.COMPLETE,))]
    if not search.cross_validate or not ranked:
        for t in study.get_trials(deepcopy=False, states=(states.PRUNED,)):
            cut = t.user_attrs.get("cut") if t.user_attrs.get("how") == "cut" else None
            if cut and cut.get("model") and cut.get("value") is not None and math.isfinite(cut["value"]):
                ranked.append((cut["value"], 0, t, cut))
    if not ranked:
        return None
    sign = -1.0 if search.direction == "minimize" else 1.0
    value, _, trial, cut = max(ranked, key=lambda r: (sign * r[0], r[1], -r[2].number))
    return _Best(trial.number, value, dict(trial.params), cut)


def _keep_weights_of_best(study, search: _Search) -> None:
    """Only the best trial keeps its model folders (each is the encoder's size)."""
    best = _best(study, search)
    keep = f"trial-{best.number:03d}" if best is not None else None
    for folder in sorted((search.out / "trials").glob("trial-*")):
        if folder.name != keep:
            drop_weights(folder)


def _install_best(search: _Search, study, out: Path, clock: _Clock) -> bool:
    """``OUTPUT/best``: the best trial's model (with a dev split, or a trial the budget cut: the model it left), or
    the best settings trained on all rows (cross-validation, whose fold models each saw only part of the data).
    Nothing to do when it holds that trial already; returns True when a signal interrupted the final training."""
    best = _best(study, search)
    if study.user_attrs.get("installed") == best.number and (out / "best").is_dir():
        return False
    trial_folder = out / "trials" / f"trial-{best.number:03d}"
    if best.cut:
        source = trial_folder / best.cut["model"]
    elif search.cross_validate:
        import optuna

        train, model = search.configs(optuna.trial.FixedTrial(best.params))  # the best trial's settings again
        final = out / "final"
        shutil.rmtree(final, ignore_errors=True)
        search.print(f"training the best settings (trial {best.number}) on all {len(search.data.train)} rows")
        result, _ = search._train(final, search.data, train, model, [_ClockKeeper(clock)])
        if result.interrupted:
            return True
        source = final / "last"  # no dev split to choose a checkpoint on: the final weights
    else:
        source = trial_folder / "best"
    staging = outputs.scratch(out / "best", "tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(out / "best", ignore_errors=True)
    staging.rename(out / "best")
    study.set_user_attr("installed", best.number)
    return False


def _cut_note(search: _Search, best: _Best) -> str:
    """The line that says ``OUTPUT/best`` comes from a trial the budget cut: where, which model, scored on what."""
    cut, metric, where = best.cut, search.metric, search.out / "best"
    line = f"trial {best.number} was cut by the budget at epoch {cut['epoch']:g} of {cut['epochs']:g} "
    if "fold" not in cut:
        line += f"(step {cut['step']} of {cut['steps']}); "
        if cut["model"] == "best":
            line += f"its best model (dev {metric} {cut['value']:.4f} at step {cut['model_step']}) is {where}"
        else:  # cut before its first evaluation
            line += (f"it had not been evaluated yet, so its weights at the cut (dev {metric} {cut['value']:.4f}, "
                     f"step {cut['model_step']}) are {where}")
    else:
        held_out = f"{cut['model_score']:.4f} on its {cut['held_out_rows']} held-out rows"
        line += (f"in fold {cut['fold']} of {cut['folds']}; no time was left to train its settings on all rows, so "
                 f"{where} is its fold-1 model{' as cut' if cut['fold'] == 1 else ''} (trained on "
                 f"{cut['model_rows']} of {len(search.data.train)} rows; {metric} {held_out})")
        if cut["finished_folds"]:
            line += f"; the trial's {metric} {cut['value']:.4f} is the mean over its {cut['finished_folds']} " \
                    f"finished fold{'s' if cut['finished_folds'] > 1 else ''}"
    return line + "; a larger --budget continues the search"


def _summarise(study, search: _Search, spent: float, interrupted: bool) -> TuneResult:
    def value(t):
        cut = t.user_attrs.get("cut") if t.user_attrs.get("how") == "cut" else None
        if cut and cut.get("value") is not None:  # the score of the model it left, not its last rung
            return cut["value"]
        return t.value if t.value is not None else (list(t.intermediate_values.values())[-1] if
                                                    t.intermediate_values else None)

    trials = [{"number": t.number, "state": t.state.name.lower(), "params": t.params, "value": value(t),
               "seconds": float(t.user_attrs.get("seconds", 0.0)), "how": t.user_attrs.get("how"),
               "folder": f"trials/trial-{t.number:03d}", "cut": t.user_attrs.get("cut")} for t in study.trials]
    best = _best(study, search)
    installed = best is not None and study.user_attrs.get("installed") == best.number
    note = _cut_note(search, best) if installed and best.cut else None
    return TuneResult(search.out, best.params if best else None, best.value if best else None, search.metric, trials,
                      spent, interrupted, best.number if best else None, note)
