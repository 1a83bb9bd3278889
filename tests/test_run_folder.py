"""textclf.train.run_folder: what fine-tuning and pretraining runs share about their folders (one copy for both)."""

from __future__ import annotations

import json

from textclf.train.run_folder import flatten, setting_changes, truncate_log


def test_setting_changes_name_what_a_resume_may_not_change():
    saved = {"train": {"lr": 1e-4, "epochs": 1}, "run": {"output": "a"}}
    now = {"train": {"lr": 1e-3, "epochs": 3}, "run": {"output": "b"}}
    assert flatten(now) == {"train.lr": 1e-3, "train.epochs": 3, "run.output": "b"}
    assert setting_changes(now, saved, ("run.", "train.epochs")) == ["train.lr: 0.0001 -> 0.001"]
    # a damaged config (null, a list) counts as "every setting differs", never as a crash
    assert setting_changes(now, None, ("run.",)) == setting_changes(now, [1, 2], ("run.",)) == [
        "train.epochs: None -> 3", "train.lr: None -> 0.001"]
    # a setting added by a later release is no change at its default (the old run behaved so), a change otherwise
    assert setting_changes({"train": {"lr": 1e-4, "recipe": "fine-tune"}}, {"train": {"lr": 1e-4}}, ()) == []
    assert setting_changes({"train": {"lr": 1e-4, "recipe": "few-shot"}}, {"train": {"lr": 1e-4}}, ()) == [
        "train.recipe: None -> 'few-shot'"]


def test_truncate_log_keeps_the_checkpoint_steps_and_drops_torn_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    truncate_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]  # no temporary file left
    truncate_log(tmp_path / "missing.jsonl", 2)  # nothing to do, no error
