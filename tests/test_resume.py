"""Exact resume and crash-safe checkpoints.

The main test kills a real ``textclf train`` process (``tests/helpers/pausing_cli.py``) with SIGKILL at several
points -- inside an accumulation window, during a dev evaluation, while a checkpoint is being written, right after
an optimizer step -- and once with SIGTERM, resumes it each time with ``--resume auto``, and requires the final
weights, the best model, the metrics and the log to equal those of an uninterrupted run bit for bit. The recipe
has dropout on, a shuffled length-grouped loader, gradient accumulation with a short last window per epoch, and
early stopping.

The in-process tests below cover the checkpoint files themselves: atomic writes, rotation, damaged files, and
that loading never unpickles code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SignalAt
from safetensors.torch import load_file

from textclf.errors import OutputDirError, TrainingError
from textclf.runtime import rng_state, seed_everything, set_rng_state
from textclf.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "helpers" / "pausing_cli.py"

# 200 rows in batches of 8 = 25 micro-batches per epoch; 3 per optimizer step = 9 steps per epoch, the last one of
# a single micro-batch. Evaluation and checkpoints every 3 steps; early stopping after 3 evaluations without gain
# (with seed 3 it stops at step 42, after every interruption point below).
RECIPE = ["--epochs", "5", "--batch-size", "8", "--grad-accum", "3", "--eval-steps", "3", "--save-steps", "3",
          "--patience", "3", "--lr", "5e-3", "--warmup-ratio", "0.1", "--pooling", "mean", "--dropout", "0.1",
          "--seed", "3", "--log-steps", "2", "--max-length", "32", "--device", "cpu", "--precision", "fp32",
          "--quiet"]

# Where the interrupted run is stopped, in order: (pause point, signal, checkpoint the next process resumes from).
# Steps 9, 18 and 27 end an epoch; the others are mid-epoch. A SIGTERM one step before the end is added below.
KILLS = [
    ("micro:5:1", signal.SIGKILL, 3),  # second of three micro-batches of step 5: mid accumulation window
    ("eval:12", signal.SIGKILL, 9),  # evaluating after step 12, before its checkpoint; resumes at an epoch start
    ("save:15", signal.SIGKILL, 12),  # checkpoint 15 half written: model and optimizer there, state not yet
    ("after_step:23", signal.SIGKILL, 21),  # weights of step 23 updated, the step not yet counted
]



def start(model_dir: Path, data_dir: Path, out: Path, point: str = "") -> subprocess.Popen:
    env = {**os.environ, "TEXTCLF_TEST_PAUSE": point, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    args = ["train", "--data", str(data_dir), "--model", str(model_dir), "--output", str(out), *RECIPE,
            "--resume", "auto"]
    stderr = open(out.parent / f"{out.name}-{point or 'full'}.stderr".replace(":", "_"), "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, str(HELPER), *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env=env, cwd=ROOT)
    proc.stderr_file = stderr
    return proc


def wait_for_pause(proc: subprocess.Popen, lines: list[str]) -> bool:
    """Read stdout until the helper pauses (True) or the process ends without pausing (False)."""
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("PAUSED"):
            return True
    return False


def finish(proc: subprocess.Popen, lines: list[str], timeout: float = 300) -> tuple[int, str, str]:
    out, _ = proc.communicate(timeout=timeout)
    proc.stderr_file.seek(0)
    err = proc.stderr_file.read()
    proc.stderr_file.close()
    return proc.returncode, "".join(lines) + out, err


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a} and {b} differ in {different[:5]}"


def log_records(path: Path) -> list[dict]:
    """log.jsonl without wall-clock fields."""
    volatile = {"time", "train/samples_per_second", "train/tokens_per_second"}
    return [{k: v for k, v in json.loads(line).items() if k not in volatile}
            for line in path.read_text(encoding="utf-8").splitlines()]


def test_killed_and_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path, tiny_model_dir, tiny_data_dir):
    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"
    reference = start(tiny_model_dir, tiny_data_dir, reference_out)  # runs alongside the interrupted lineage
    reference_lines: list[str] = []

    def reference_result() -> dict:
        if reference.returncode is None:
            code, stdout, stderr = finish(reference, reference_lines)
            assert code == 0, f"reference run failed ({code}):\n{stdout}\n{stderr}"
        return json.loads((reference_out / "metrics.json").read_text())

    stops = [*KILLS, None]  # None: the SIGTERM stop, placed once the reference's length is known
    resumed_from, interruptions = None, 0
    while True:
        stop = stops.pop(0) if stops else ("", None, None)  # finally: run to the end
        if stop is None:  # SIGTERM inside the step before the last: clean exit, the last resume has one step left
            last = reference_result()["global_step"]
            stop = (f"micro:{last - 1}:0", signal.SIGTERM, last - 1)
        point, sig, next_checkpoint = stop
        proc = start(tiny_model_dir, tiny_data_dir, out, point)
        lines: list[str] = []
        paused = wait_for_pause(proc, lines) if point else False
        if paused:
            proc.send_signal(sig)
        code, stdout, stderr = finish(proc, lines)
        where = f"run {interruptions + 1} ({point or 'to the end'}):\n{stdout}\n{stderr}"
        if resumed_from is not None:
            assert f"resuming from {out / 'checkpoints' / ckpt.checkpoint_name(resumed_from)}" in stdout, where
        if not paused:  # the end (or early stopping came before the point: other hardware, other numerics)
            assert code == 0 and "Traceback" not in stderr, where
            break
        interruptions += 1
        assert "Traceback" not in stderr, where
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, where
        else:
            assert code == 128 + signal.SIGTERM, where
            assert f"--output {out}" in stderr and "--resume auto" in stderr and "--overwrite" not in stderr, where
        if point.startswith("save:"):  # the half-written checkpoint is invisible; the previous one is intact
            step = int(point.split(":")[1])
            tmp = list((out / "checkpoints").glob(f".textclf-tmp-{ckpt.checkpoint_name(step)}-*"))
            assert tmp and (tmp[0] / "model.safetensors").is_file() and not (tmp[0] / ckpt.STATE_FILE).exists()
            assert ckpt.latest_checkpoint(out / "checkpoints").name == ckpt.checkpoint_name(next_checkpoint)
        assert ckpt.latest_checkpoint(out / "checkpoints").name == ckpt.checkpoint_name(next_checkpoint), where
        resumed_from = next_checkpoint

    expected = reference_result()
    got = json.loads((out / "metrics.json").read_text())
    assert interruptions >= 3, "fewer than three interruptions were exercised"
    assert_same_weights(reference_out / "last" / "model.safetensors", out / "last" / "model.safetensors")
    assert_same_weights(reference_out / "best" / "model.safetensors", out / "best" / "model.safetensors")
    assert got == expected  # history of every evaluation, best step, dev and test reports
    for name in ("best", "last"):
        assert json.loads((out / name / "textclf.json").read_text()) == \
            json.loads((reference_out / name / "textclf.json").read_text())
    assert log_records(out / "log.jsonl") == log_records(reference_out / "log.jsonl")
    assert not list((out / "checkpoints").glob(".*")), "temporary folders were left behind"


# ================================================================================================ checkpoint files


@pytest.fixture()
def saved(tmp_path):
    """A real checkpoint of a small model, its optimizer (with state) and the RNG states."""
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    folder = ckpt.save_checkpoint(tmp_path / "checkpoints" / "step-000001", model, optimizer, rng_state(),
                                  {"train_state": {"global_step": 1}})
    return folder, model, optimizer


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(saved):
    folder, model, optimizer = saved
    expected_draw = torch.rand(3)  # what the torch RNG gives right after the save
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state, rng = ckpt.load_checkpoint(folder, fresh, fresh_optimizer, torch.device("cpu"))
    assert state["train_state"] == {"global_step": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    set_rng_state(rng)
    assert torch.equal(torch.rand(3), expected_draw)


def test_crash_during_write_leaves_previous_checkpoint_and_auto_skips_it(saved):
    folder, model, optimizer = saved

    def crash(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_atomically(folder.parent / "step-000002", crash)
    assert not (folder.parent / "step-000002").exists()
    assert ckpt.latest_checkpoint(folder.parent) == folder
    ckpt.load_checkpoint(folder, model, optimizer, torch.device("cpu"))  # still loadable
    # An incomplete folder that did land under a checkpoint name (copied by hand, say) is skipped as well.
    (folder.parent / "step-000003").mkdir()
    (folder.parent / "step-000003" / "model.safetensors").write_bytes(b"x")
    assert ckpt.latest_checkpoint(folder.parent) == folder
    ckpt.rotate_checkpoints(folder.parent, keep=2)
    assert not list(folder.parent.glob(".textclf-*"))


def test_rotation_keeps_only_the_newest_n(tmp_path):
    from textclf import TrainConfig

    for step in range(1, 7):
        ckpt.write_atomically(tmp_path / ckpt.checkpoint_name(step),
                              lambda tmp: (tmp / ckpt.STATE_FILE).write_text('{"complete": true}'))
    ckpt.rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000005", "step-000006"]
    # The default keeps what resuming needs, the newest one: a checkpoint is about 3x the weights (AdamW's two
    # moments), and the best weights are in best/ already, so no older or best step's checkpoint is kept.
    ckpt.rotate_checkpoints(tmp_path, keep=TrainConfig().keep_checkpoints)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000006"]
    assert not list(tmp_path.glob(".*"))


def test_interrupted_replacement_of_best_is_recovered(tmp_path):
    (tmp_path / ".textclf-old-best-123").mkdir()  # the old best/, moved aside just before the process died
    (tmp_path / ".textclf-old-best-123" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / ".textclf-tmp-last-123").mkdir()
    ckpt.recover_bundles(tmp_path)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", "truncate"),
    ("optimizer.pt", "truncate"),
    ("rng.safetensors", "garbage"),
    (ckpt.STATE_FILE, "truncate"),
])
def test_damaged_checkpoint_file_gives_an_error_naming_it(saved, name, damage):
    folder, model, optimizer = saved
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(TrainingError, match=rf"{path.name}.*(damaged or truncated|cannot be read).*delete"):
        ckpt.load_checkpoint(folder, model, optimizer, torch.device("cpu"))


class _Payload:
    """A pickle that would run code on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_unpickles_code(saved, tmp_path):
    folder, model, optimizer = saved
    marker = tmp_path / "code-ran"
    torch.save({"state": {}, "param_groups": [], "evil": _Payload(marker)}, folder / "optimizer.pt")
    with pytest.raises(TrainingError, match=r"optimizer\.pt is damaged or truncated"):
        ckpt.load_checkpoint(folder, model, optimizer, torch.device("cpu"))
    assert not marker.exists()


def test_checkpoint_of_another_model_is_refused_clearly(saved):
    folder, _, _ = saved
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))
    with pytest.raises(TrainingError, match=r"does not fit this model"):
        ckpt.load_checkpoint(folder, other, None, torch.device("cpu"))


# ================================================================================================ trainer, in-process


def _trainer(model_dir, data_dir, out, **overrides):
    from textclf import ModelConfig, TrainConfig, Trainer

    config = dict(max_steps=6, batch_size=16, grad_accum=2, eval_steps=2, save_steps=2, patience=2, lr=5e-3,
                  max_length=32, device="cpu", precision="fp32", seed=3, log_steps=1)
    callbacks = overrides.pop("callbacks", None)
    overwrite = overrides.pop("overwrite", False)
    config.update(overrides)
    return Trainer(str(model_dir), data=data_dir, output_dir=out, config=TrainConfig(**config), progress=False,
                   model_config=ModelConfig(pooling="mean"), callbacks=callbacks, overwrite=overwrite)


def test_sigterm_checkpoints_and_resume_auto_continues_in_process(tmp_path, tiny_model_dir, tiny_data_dir):
    """SIGTERM mid-run returns ``interrupted``; changed settings are refused; resuming twice matches the reference."""
    reference = _trainer(tiny_model_dir, tiny_data_dir, tmp_path / "reference").fit()
    out = tmp_path / "run"
    trainer = _trainer(tiny_model_dir, tiny_data_dir, out, callbacks=[SignalAt(3), SignalAt(5)])
    result = trainer.fit()
    assert result.interrupted and result.global_step == 3 and not (out / "last").exists()
    assert result.signal == signal.SIGTERM  # what the command line exits with (128 + 15), no private state read
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000003"  # 3 is not a save step: the signal's

    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(OutputDirError, match=r"cannot resume from .*step-000003.*train\.lr: 0\.005 -> 0\.001"):
        _trainer(tiny_model_dir, tiny_data_dir, out, lr=1e-3).fit(resume="auto")
    assert sorted(p.name for p in out.rglob("*")) == before  # refused before touching anything

    # The same object again, as in a notebook after Ctrl-C: it resumes, and stops at the next signal.
    again = trainer.fit(resume="auto")
    assert again.interrupted and again.global_step == 5
    # A new trainer without the _SignalAt callbacks: callback states are matched by class, not by position.
    resumed = _trainer(tiny_model_dir, tiny_data_dir, out).fit(resume="auto")
    assert (resumed.global_step, resumed.best_step, resumed.dev) == (reference.global_step, reference.best_step,
                                                                      reference.dev)
    assert_same_weights(tmp_path / "reference" / "last" / "model.safetensors", out / "last" / "model.safetensors")
    assert_same_weights(tmp_path / "reference" / "best" / "model.safetensors", out / "best" / "model.safetensors")


def test_resume_auto_without_checkpoint(tmp_path, tiny_model_dir, tiny_data_dir):
    """No checkpoint yet: the same run's leftovers are replaced; another run's are refused."""
    out = tmp_path / "run"
    first = _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, save_steps=None, eval_steps=None).fit()
    assert ckpt.latest_checkpoint(out / "checkpoints") is None  # too short for any checkpoint
    (out / "log.jsonl").write_text('{"step": 99, "train/loss": 1.0}\n')  # a leftover that must not survive
    again = _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, save_steps=None, eval_steps=None).fit(
        resume="auto")
    assert again.dev == first.dev and '"step": 99' not in (out / "log.jsonl").read_text()
    with pytest.raises(OutputDirError, match=r"holds a different run and no checkpoint.*train\.batch_size: 16 -> 8"):
        _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, save_steps=None, batch_size=8).fit(resume="auto")
    assert (out / "metrics.json").is_file()


def test_foreign_folder_is_never_deleted_even_with_overwrite(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputDirError, match=r"holds no textclf run.*thesis\.tex"):
        _trainer(tiny_model_dir, tiny_data_dir, out, overwrite=True).fit()
    assert (out / "thesis.tex").read_text() == "years of work"


def test_overwrite_never_deletes_a_project_folder_that_holds_a_config_yaml(tmp_path, tiny_model_dir, tiny_data_dir):
    # A project folder with its own config.yaml (any tool's) beside notes and code: --overwrite used to delete it.
    out = tmp_path / "proj"
    (out / "src").mkdir(parents=True)
    (out / "config.yaml").write_text("lr: 1\n")
    (out / "notes.md").write_text("results so far")
    (out / "src" / "model.py").write_text("print(1)")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(OutputDirError, match=r"no textclf run \(no \.textclf marker.*config\.yaml, notes\.md, src"):
        _trainer(tiny_model_dir, tiny_data_dir, out, overwrite=True).fit()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "notes.md").read_text() == "results so far"


def test_overwrite_replaces_only_marked_textclf_runs(tmp_path, tiny_model_dir, tiny_data_dir):
    from textclf import outputs

    out = tmp_path / "run"
    _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2).fit()
    assert json.loads((out / outputs.MARKER).read_text())["kind"] == "run"
    assert outputs.RUN.foreign(out) == []  # the layout lists everything a run writes
    _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, overwrite=True).fit()
    assert (out / "best").is_dir() and (out / outputs.MARKER).is_file()
    # Without the marker, names alone prove nothing (a project with config.yaml, data/ and runs/ has them too).
    (out / outputs.MARKER).unlink()
    with pytest.raises(OutputDirError, match=r"no \.textclf marker.*delete it yourself"):
        _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, overwrite=True).fit()
    assert (out / "best").is_dir() and (out / "config.yaml").is_file()
    # A marker that is a link (planted, or copied as one) is no marker either.
    (out / outputs.MARKER).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputDirError, match=r"no \.textclf marker"):
        _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, overwrite=True).fit()
    (out / outputs.MARKER).unlink()
    outputs.claim(out, outputs.RUN)
    # A file of the user's inside a run folder makes it theirs: --overwrite stops, and the run stays.
    (out / "my-analysis.ipynb").write_text("{}")
    with pytest.raises(OutputDirError, match=r"my-analysis\.ipynb"):
        _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2, overwrite=True).fit()
    assert (out / "best").is_dir() and (out / "my-analysis.ipynb").is_file()


def test_evaluation_leaves_every_rng_untouched(tmp_path, tiny_model_dir, tiny_data_dir):
    """An evaluation between two steps must not shift the dropout masks that follow it."""
    import random

    import numpy as np

    trainer = _trainer(tiny_model_dir, tiny_data_dir, tmp_path / "run")
    trainer.model.train()
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    trainer.evaluate()
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()
    assert trainer.model.training  # and the train/eval mode is given back


def test_only_checkpoint_folders_count_as_checkpoints(tmp_path):
    # A backup copy made by hand (step-000002.bak), a state file that is not an object, a stray file: ignored.
    for name, state in (("step-000001", {"complete": True}), ("step-000002.bak", {"complete": True}),
                        ("step-000003", None), ("step-latest", {"complete": True})):
        (tmp_path / name).mkdir()
        (tmp_path / name / ckpt.STATE_FILE).write_text(json.dumps(state))
    (tmp_path / "step-000009").write_text("a file, not a folder")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000001"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000001"


def test_a_second_process_on_the_same_run_folder_stops_at_once(tmp_path, tiny_model_dir, tiny_data_dir,
                                                              monkeypatch):
    from textclf import outputs

    monkeypatch.setattr(outputs, "LOCK_WAIT_SECONDS", 0.3)  # a killed holder gets 10 s to exit; a live one keeps it
    out = tmp_path / "run"
    # This process plays the job that is still running: it holds the folder's lock, as fit() does.
    with outputs.locked(out):
        with pytest.raises(OutputDirError, match=rf"run is in use by another textclf process \(PID {os.getpid()}\)"):
            _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2).fit(resume="auto")
        assert [p.name for p in out.iterdir()] == [outputs.LOCK_FILE]  # the refused run wrote nothing
    assert not out.exists()  # the holder wrote nothing either: no empty folder is left behind
    result = _trainer(tiny_model_dir, tiny_data_dir, out, max_steps=2).fit()
    assert result.global_step == 2 and not (out / outputs.LOCK_FILE).exists()  # released when fit returns


def test_the_run_lock_of_a_killed_process_is_released(tmp_path, monkeypatch):
    # flock dies with its holder: a job killed with SIGKILL never blocks the resumed one.
    from textclf import outputs

    monkeypatch.setattr(outputs, "LOCK_WAIT_SECONDS", 3.0)

    out = tmp_path / "run"
    code = ("import os, sys, time; from textclf import outputs\n"
            f"with outputs.locked(__import__('pathlib').Path({str(out)!r})):\n"
            "    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=rf"PID {holder.pid}\)"), outputs.locked(out):
            pass
        holder.kill()  # killed while holding the lock; the next run, started at once, waits for it to exit
        with outputs.locked(out):  # the kernel dropped the dead holder's lock; its stale file is reused
            assert (out / outputs.LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_resume_that_would_end_before_the_saved_best_model_is_refused(tmp_path, tiny_model_dir, tiny_data_dir):
    # The run was killed right after best/ was written at step 6, before any checkpoint after step 4.
    out = tmp_path / "run"
    result = _trainer(tiny_model_dir, tiny_data_dir, out, patience=None).fit()  # 6 steps, checkpoints at 2 and 4
    # By default only the newest checkpoint is kept, not the best step's (step 2 here): best/ holds those weights.
    assert result.best_step == 2
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-000004"]
    meta = json.loads((out / "best" / "textclf.json").read_text())
    meta["step"] = 6
    (out / "best" / "textclf.json").write_text(json.dumps(meta))
    with pytest.raises(OutputDirError, match=r"step 4\) with 5 optimizer steps: .*best was saved at step 6 .*"
                                             r"Resume with --max-steps 6 or more"):
        _trainer(tiny_model_dir, tiny_data_dir, out, patience=None, max_steps=5).fit(resume="auto")
    assert json.loads((out / "best" / "textclf.json").read_text())["step"] == 6  # nothing was touched
    # As long as the original run (it reaches step 6 and evaluates there again): allowed.
    assert _trainer(tiny_model_dir, tiny_data_dir, out, patience=None).fit(resume="auto").global_step == 6


@pytest.mark.parametrize("full_at", [1, 2])
def test_a_full_disk_gives_a_clear_error_and_leaves_nothing_half_written(tmp_path, tiny_model_dir, tiny_data_dir,
                                                                        monkeypatch, full_at):
    # safetensors reports ENOSPC as its own error type; the n-th checkpoint write hits the full disk.
    real, writes = ckpt.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        if filename.endswith("model.safetensors"):
            writes.append(filename)
            if len(writes) == full_at:
                raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                   '"No space left on device" })')
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"the disk holding .*run is full: no space left while writing at "
                                            rf"optimizer step {2 * full_at}; free some space"):
        _trainer(tiny_model_dir, tiny_data_dir, out, eval_steps=None, patience=None).fit()
    if full_at == 1:  # nothing saved yet: no folder to --overwrite, the same command starts afresh
        assert not out.exists()
    else:  # the first checkpoint is intact and resumable; no temporary folder is left
        assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000002"
        assert not [p for p in out.rglob(".*") if p.name != ".textclf"]
