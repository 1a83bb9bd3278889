"""textclf tune: budgets, trials as run folders, the best model, cross-validation without dev, resuming (never on
other rows, never over a tune.db that is not a file)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

import textclf
from textclf import ModelConfig, TrainConfig
from textclf.cli import main
from textclf.errors import ConfigError, TrainingError
from textclf.tools import tune as tune_module
from textclf.tools.tune import DB_FILE, STUDY, parse_budget, tune

optuna = pytest.importorskip("optuna")  # the tune extra

BASE = {"device": "cpu", "batch_size": 32, "max_length": 32, "calibrate": False, "log_steps": 100}


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("1h30m", 5400), ("90s", 90), ("45", 45), ("1.5h", 5400),
                                           ("2m30s", 150)])
def test_budgets(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "20 minutes", "m", "0s", "-5m"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def _search(data, out, **kw):
    settings = {"budget": 600, "model_config": ModelConfig(name=kw.pop("model")),
                "train_config": TrainConfig(**{**BASE, **kw.pop("train", {})}), "printer": None, **kw}
    return tune(data, out, **settings)


def test_search_with_dev(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "search"
    result = _search(tiny_data, out, model=str(tiny_model_dir), max_trials=3)
    assert len(result.trials) == 3 and result.best_params is not None
    assert set(result.best_params) == {"lr", "epochs", "freeze_layers_below"}  # a plain encoder: no few-shot
    assert 1e-5 <= result.best_params["lr"] <= 3e-4
    for trial in result.trials:  # every trial is a normal run folder
        folder = out / trial["folder"]
        assert (folder / "config.yaml").is_file() and (folder / "metrics.json").is_file()
    best_number = next(t["number"] for t in result.trials if t["state"] == "complete" and
                       t["value"] == result.best_value)
    best_folder = out / f"trials/trial-{best_number:03d}"
    kept = [t for t in (out / "trials").iterdir() if (t / "best").is_dir()]
    assert kept == [best_folder]  # only the best trial keeps its weights
    predictor = textclf.Predictor.from_pretrained(out / "best")
    assert len(predictor.predict(["体育新闻"])) == 1
    summary = json.loads((out / "tune.json").read_text())
    assert summary["best_params"] == result.best_params and summary["metric"] == "macro_f1"

    # the same call again continues the study: one more trial, new settings, the time spent adds up
    again = _search(tiny_data, out, model=str(tiny_model_dir), max_trials=4)
    assert len(again.trials) == 4 and again.spent_seconds > result.spent_seconds
    assert [t["params"] for t in again.trials[:3]] == [t["params"] for t in result.trials]
    assert again.trials[3]["params"] not in [t["params"] for t in result.trials]

    # a budget spent already: no new trial, and the best model is still there
    spent = _search(tiny_data, out, model=str(tiny_model_dir), budget=again.spent_seconds)
    assert len(spent.trials) == 4 and (out / "best" / "config.json").is_file()


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    real = tune_module._Search.run_trial

    def diverge_first(self, trial, deadline):
        if trial.number == 0:
            raise TrainingError("the loss became nan at step 3")
        return real(self, trial, deadline)

    monkeypatch.setattr(tune_module._Search, "run_trial", diverge_first)
    result = _search(tiny_data, tmp_path / "s", model=str(tiny_model_dir), max_trials=2)
    assert result.trials[0]["state"] == "fail" and "complete" in [t["state"] for t in result.trials[1:]]
    assert result.best_params is not None and (tmp_path / "s" / "best").is_dir()


def test_the_same_error_every_trial_is_raised(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    def always(self, trial, deadline):
        raise TrainingError("every trial fails")

    monkeypatch.setattr(tune_module._Search, "run_trial", always)
    with pytest.raises(TrainingError, match="every trial fails"):
        _search(tiny_data, tmp_path / "s", model=str(tiny_model_dir), max_trials=5)


def test_explicit_settings_are_not_searched(tiny_model_dir, tiny_data, tmp_path):
    result = _search(tiny_data, tmp_path / "s", model=str(tiny_model_dir), train={"lr": 2e-4}, max_trials=1)
    assert "lr" not in result.trials[0]["params"]
    saved = (tmp_path / "s" / "trials" / "trial-000" / "config.yaml").read_text()
    assert "lr: 0.0002" in saved


def test_cross_validation_without_dev(tiny_model_dir, tiny_data, tmp_path):
    data = textclf.data.readers.DatasetSplits(tiny_data.train, None, None, tiny_data.label_map)
    out = tmp_path / "cv"
    result = _search(data, out, model=str(tiny_model_dir), folds=2, max_trials=2)
    assert len(result.trials) == 2
    trial = out / "trials" / "trial-000"
    assert (trial / "fold-1" / "metrics.json").is_file() and (trial / "fold-2" / "metrics.json").is_file()
    assert not (trial / "fold-1" / "best").exists()  # fold models are scored, then dropped
    assert (out / "final" / "last").is_dir() and (out / "best" / "config.json").is_file()  # best settings, all rows


def test_cross_validation_keeps_time_back_for_the_final_training(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    data = textclf.data.readers.DatasetSplits(tiny_data.train, None, None, tiny_data.label_map)
    kept = []

    def final_takes_long(search, study):  # as if the last run on all rows needed the whole budget
        kept.append(estimate(search, study))
        return 600.0 if kept[-1] > 0 else 0.0

    estimate = tune_module._final_training_seconds
    monkeypatch.setattr(tune_module, "_final_training_seconds", final_takes_long)
    out = tmp_path / "cv"
    result = _search(data, out, model=str(tiny_model_dir), folds=2, max_trials=3)
    assert len(result.trials) == 1  # no second trial: it would eat the final training's time
    assert kept[-1] == pytest.approx(result.trials[0]["seconds"] / (2 - 1))
    assert (out / "best" / "config.json").is_file()


def _budget_ends_in(monkeypatch, run: int, step: int) -> None:
    """The budget runs out at optimizer step ``step`` of the ``run``-th training run of the search's trials (a fold
    is a run; the probe is not): as if the model were slower than measured. The search's clock is moved on rather
    than the steps slowed, so where the trial is cut does not depend on the machine's load."""
    runs = []

    class BudgetRunsOut(textclf.Callback):
        def __init__(self, clock):
            self.clock, self.run = clock, len(runs)

        def on_step_end(self, trainer):
            if self.run == run and trainer.state.global_step == step:
                self.clock.before += self.clock.budget  # the time of earlier sessions: the whole budget is gone

    class LateTrainer(tune_module.SearchTrainer):
        def __init__(self, **kwargs):
            deadlines = [c for c in kwargs.get("callbacks") or () if isinstance(c, tune_module._Deadline)]
            if deadlines:  # a trial's run (not the probe, nor the final training on all rows)
                runs.append(1)
                kwargs["callbacks"] = [BudgetRunsOut(deadlines[0].clock), *kwargs["callbacks"]]  # seen at this step
            super().__init__(**kwargs)

    monkeypatch.setattr(tune_module, "SearchTrainer", LateTrainer)


def test_a_budget_that_cuts_the_only_trial_still_ends_with_its_best_model(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                          capsys, monkeypatch):
    # The user's first hour: the first trial (12 epochs) was cut by the budget and the search ended with "no trial
    # finished" and no model. A cut trial was evaluated on dev at each epoch's end: its best checkpoint is a model.
    _budget_ends_in(monkeypatch, run=1, step=10)  # in epoch 2 of 12 (7 steps an epoch), one evaluation behind it
    out = tmp_path / "search"
    assert main(["tune", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(out),
                 "--device", "cpu", "--max-length", "32", "--no-calibrate", "--batch-size", "32", "--recipe",
                 "fine-tune", "--epochs", "12", "--budget", "10m"]) == 0
    printed = capsys.readouterr().out
    assert f"best model: {out / 'best'}" in printed and "no trial finished" not in printed, printed
    assert "trial 0 was cut by the budget at epoch 1.4 of 12 (step 10 of 84); its best model (dev macro_f1 " \
           in printed and f"at step 7) is {out / 'best'}" in printed, printed
    predictor = textclf.Predictor.from_pretrained(out / "best")
    assert len(predictor.predict(["体育新闻"])) == 1
    summary = json.loads((out / "tune.json").read_text())
    trial = summary["trials"][0]
    assert trial["how"] == "cut" and trial["cut"]["model"] == "best" and trial["cut"]["model_step"] == 7
    assert summary["best_trial"] == 0 and summary["best_value"] == trial["value"] == trial["cut"]["value"]
    assert summary["best_note"].startswith("trial 0 was cut by the budget at epoch 1.4 of 12")
    best_dev = json.loads((out / "trials" / "trial-000" / "metrics.json").read_text())["dev"]["macro_f1"]
    assert summary["best_value"] == pytest.approx(best_dev)  # the score of the model in best/, on dev


def test_a_cross_validated_trial_cut_by_the_budget_leaves_its_first_fold_model(tiny_model_dir, tiny_data, tmp_path,
                                                                               monkeypatch):
    # No dev split: the settings are not trained again on all rows (the budget is spent); fold 1's model, scored on
    # its held-out rows, is what the search has seen.
    _budget_ends_in(monkeypatch, run=2, step=3)  # in fold 2 of 2
    data = textclf.data.readers.DatasetSplits(tiny_data.train, None, None, tiny_data.label_map)
    out = tmp_path / "cv"
    result = _search(data, out, model=str(tiny_model_dir), folds=2, train={"epochs": 12, "recipe": "fine-tune"})
    assert len(result.trials) == 1 and result.best_params is not None and (out / "best").is_dir()
    assert result.best_trial == 0
    cut = result.trials[0]["cut"]
    assert result.trials[0]["how"] == "cut" and cut["fold"] == 2 and cut["finished_folds"] == 1
    assert result.best_value == cut["value"] == cut["model_score"]  # the mean over the one finished fold: fold 1's
    assert "in fold 2 of 2" in result.best_note and f"{out / 'best'} is its fold-1 model (trained on 100 of 200 " \
        "rows" in result.best_note and "mean over its 1 finished fold" in result.best_note, result.best_note
    assert not (out / "final").exists()  # no training on all rows past the budget
    assert not (out / "trials" / "trial-000" / "fold-2" / "last").exists()  # the cut fold's weights are dropped
    assert len(textclf.Predictor.from_pretrained(out / "best").predict(["体育新闻"])) == 1


def test_the_first_trial_is_planned_to_fit_the_budget(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    # Every step takes at least 0.2 s (the probe that times the steps runs them too), so an epoch of 7 steps takes
    # at least 1.4 s; the epochs' range goes to 20 (40 s at least) and the budget is 20 s. The first trial must be
    # planned within half the budget: at most 7 epochs, whatever the machine's load (a load only lowers the cap).
    class SlowTrainer(tune_module.SearchTrainer):
        def training_step(self, batch):
            time.sleep(0.2)
            return super().training_step(batch)

    monkeypatch.setattr(tune_module, "SearchTrainer", SlowTrainer)
    said, out = [], tmp_path / "s"
    result = _search(tiny_data, out, model=str(tiny_model_dir), budget=20, max_trials=1, printer=said.append,
                     train={"recipe": "fine-tune"})
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / DB_FILE}")
    planned = study.trials[0].distributions["epochs"].high  # the most epochs the first trial could draw
    assert 1 <= result.trials[0]["params"]["epochs"] <= planned <= 7
    assert result.trials[0]["how"] == "complete" and result.best_trial == 0 and (out / "best").is_dir()
    lines = [line for line in said if line.startswith("budget: trial 0 gets at most ")]
    assert len(lines) == 1 and f"at most {planned} epochs (the search goes up to " in lines[0], said


def test_few_shot_is_searched_for_a_sentence_encoder(tiny_sentence_encoder, tiny_data, tmp_path):
    result = _search(tiny_data, tmp_path / "s", model=str(tiny_sentence_encoder), max_trials=2)
    assert all("recipe" in t["params"] for t in result.trials)


def test_a_budget_that_cannot_fit_one_trial_is_refused(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"one trial takes about .*; give --budget"):
        _search(tiny_data, tmp_path / "s", model=str(tiny_model_dir), budget=0.01)


def test_a_trial_killed_mid_run_is_tried_again(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "s"
    _search(tiny_data, out, model=str(tiny_model_dir), max_trials=1)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / DB_FILE}")
    study.enqueue_trial({"lr": 1e-4, "epochs": 1, "freeze_layers_below": 1})
    trial = study.ask()  # as a process killed during this trial leaves it: RUNNING, its settings drawn
    trial.suggest_float("lr", 1e-5, 3e-4, log=True), trial.suggest_int("epochs", 1, 4)
    trial.suggest_int("freeze_layers_below", 0, 1)
    result = _search(tiny_data, out, model=str(tiny_model_dir), max_trials=2)
    states = [t["state"] for t in result.trials]
    assert states.count("fail") == 1 and result.trials[-1]["params"] == {"lr": 1e-4, "epochs": 1,
                                                                         "freeze_layers_below": 1}


def test_the_time_of_a_trial_killed_mid_run_counts(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "s"
    before = _search(tiny_data, out, model=str(tiny_model_dir), max_trials=1).spent_seconds
    storage = f"sqlite:///{out / DB_FILE}"
    at_kill = {}

    class Killed(BaseException):
        pass

    class KillAtTheSecondStep(textclf.Callback):
        def on_step_end(self, trainer):
            if trainer.state.global_step == 1:
                time.sleep(3)  # a trial long enough that losing its time would show
            elif trainer.state.global_step == 2:  # what a kill -9 here leaves in the study
                at_kill["stored"] = optuna.load_study(study_name=STUDY, storage=storage).user_attrs["spent_seconds"]
                at_kill["elapsed"] = time.monotonic() - started
                raise Killed

    class DyingTrainer(tune_module.SearchTrainer):
        def __init__(self, **kwargs):
            if "callbacks" in kwargs:  # a trial's trainer, not the probe's
                kwargs["callbacks"] = [*kwargs["callbacks"], KillAtTheSecondStep()]
            super().__init__(**kwargs)

    monkeypatch.setattr(tune_module, "SearchTrainer", DyingTrainer)
    monkeypatch.setattr(tune_module._Clock, "SAVE_EVERY", 0.0)
    started = time.monotonic()
    with pytest.raises(Killed):
        _search(tiny_data, out, model=str(tiny_model_dir), max_trials=2)
    assert at_kill["stored"] >= before + at_kill["elapsed"] - 1.0  # the trial's time so far is in the study


def test_the_data_notes_are_said_once_not_per_trial(tiny_model_dir, tiny_data, tmp_path):
    said = []
    _search(tiny_data, tmp_path / "search", model=str(tiny_model_dir), max_trials=2, printer=said.append,
            train={"max_length": 8})
    notes = [line for line in said if line.startswith("train:") and "truncated" in line]
    assert len(notes) == 1, said
    assert sum(line.startswith("trial ") for line in said) == 2, said

    said.clear()  # cross-validated: the notes are about the user's training rows, not a fold and its held-out part
    no_dev = textclf.data.readers.DatasetSplits(tiny_data.train, None, None, tiny_data.label_map)
    _search(no_dev, tmp_path / "cv", model=str(tiny_model_dir), max_trials=1, folds=2, printer=said.append,
            train={"max_length": 8})
    notes = [line for line in said if "truncated" in line]
    assert len(notes) == 1 and notes[0].startswith("train:") and f"of {len(tiny_data.train)} texts" in notes[0], said


def test_command_line(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["tune", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(out),
            "--device", "cpu", "--max-length", "32", "--no-calibrate", "--budget", "10m", "--trials", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and str(out / "best") in printed
    fresh = [str(tmp_path / "fresh") if arg == str(out) else arg for arg in argv[:-4]]
    assert main(fresh + ["--budget", "0.01s"]) == 2
    assert "one trial takes about" in capsys.readouterr().err
    assert main(argv[:-4] + ["--budget", "1s"]) == 0  # a finished search whose budget is spent: its summary
    assert "best:" in capsys.readouterr().out
    assert main(argv[:-4] + ["--budget", "soon"]) == 2
    assert "expected a duration" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "\n".join(f"文本{i},{'ab'[i % 2]}" for i in range(20)) + "\n", encoding="utf-8")
    assert main(["tune", "--data", str(other), "--model", str(tiny_model_dir), "--output", str(out),
                 "--budget", "10m"]) == 2
    assert "holds a search on other data (train: 200 rows -> " in capsys.readouterr().err  # which split, how


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("textclf tune: error: "), err
    return errors[0]


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_search_is_never_continued_on_other_rows(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    # After a label audit: the same texts, three labels changed (the row counts and the label names stay the same)
    relabelled = tmp_path / "relabelled"
    shutil.copytree(tiny_data_dir, relabelled)
    lines = (relabelled / "train.csv").read_text(encoding="utf-8").splitlines()
    names = sorted({line.rsplit(",", 1)[1] for line in lines[1:]})
    for i in (1, 6, 10):
        text, label = lines[i].rsplit(",", 1)
        lines[i] = f"{text},{names[(names.index(label) + 1) % len(names)]}"
    (relabelled / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "search"
    argv = ["tune", "--model", str(tiny_model_dir), "--output", str(out), "--device", "cpu", "--max-length", "16",
            "--no-calibrate", "--budget", "10m", "--trials", "1"]
    assert main(argv + ["--data", str(tiny_data_dir)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert main(argv + ["--data", str(relabelled)]) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"output folder {out} holds a search on other data (train: the same 200 rows, but other texts or " \
           "labels)" in message and "--overwrite" in message, message
    assert _snapshot(out) == before  # the old search, its trials and best/ are as they were

    # A study written before the fingerprint: row counts and label names are all it can be checked on, so it is
    # continued with a warning (its spent budget is not thrown away), and the fingerprint is recorded from then on.
    storage = f"sqlite:///{out / DB_FILE}"
    optuna.load_study(study_name=STUDY, storage=storage).set_user_attr("data", None)
    assert main(argv + ["--data", str(tiny_data_dir)]) == 0
    err = capsys.readouterr().err
    assert "textclf tune: warning: " in err and "cannot check that its trials saw these texts and labels" in err, err
    assert optuna.load_study(study_name=STUDY, storage=storage).user_attrs["data"]["train"]["rows"] == 200
    assert main(argv + ["--data", str(relabelled)]) == 2 and "other texts or labels" in capsys.readouterr().err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_study_database_that_is_a_folder_is_refused(tiny_model_dir, tiny_data_dir, tmp_path, capsys, overwrite):
    out = tmp_path / "search"
    (out / DB_FILE).mkdir(parents=True)  # textclf writes tune.db as a file: this folder is someone else's
    (out / DB_FILE / "notes.txt").write_text("not a database")
    (out / ".textclf").write_text('{"kind": "search"}')
    before = _snapshot(out)
    assert main(["tune", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(out),
                 "--device", "cpu", "--max-length", "16", "--budget", "10m", "--trials", "1", *overwrite]) == 2
    message = _one_error(capsys.readouterr().err)
    assert f"{out / DB_FILE} is a folder, not the search's SQLite database" in message, message
    assert _snapshot(out) == before
