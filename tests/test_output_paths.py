"""One rule for every path textclf writes (textclf.outputs, checked by the command line for every command).

* an output is never, never contains and never lies inside one of the command's inputs (links resolved);
* ``--overwrite`` replaces only a folder carrying textclf's marker, and only textclf's own scratch names count as
  crash leftovers;
* the run lock, the marker and temporary files are never written through a link textclf did not make.

The last test throws random combinations of commands and output paths (equal to, inside, around or linked to an
input, fresh, marked, unmarked, holding foreign files) at the command line and checks exit 0 or 2, no traceback,
no input changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from textclf import cli, outputs
from textclf.errors import OutputDirError

TINY = Path(__file__).parent / "data" / "tiny"


def _snapshot(*folders: Path) -> dict:
    """Every file's bytes and every link's target under ``folders``."""
    seen = {}
    for folder in folders:
        for p in sorted([folder, *folder.rglob("*")] if folder.is_dir() else [folder]):
            if p.is_symlink():
                seen[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                seen[str(p)] = p.read_bytes()
            elif p.is_dir():
                seen[str(p)] = "dir"
    return seen


def _run(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    """Inputs of every kind: a data folder, a text file, a config, a finished run (its best/ a model folder)."""
    work = tmp_path_factory.mktemp("paths")
    shutil.copytree(TINY, work / "data", ignore=shutil.ignore_patterns("*.md"))
    (work / "texts.txt").write_text("a short text\nanother one\n", encoding="utf-8")
    (work / "config.yaml").write_text("train:\n  max_steps: 1\n", encoding="utf-8")
    code = cli.main(["train", "--data", str(work / "data"), "--model", str(tiny_model_dir), "--output",
                     str(work / "run"), "--device", "cpu", "--precision", "fp32", "--max-steps", "2", "--quiet",
                     "--recipe", "fine-tune"])
    assert code == 0
    return work


# ---- the check itself -------------------------------------------------------------------------------------------

def test_check_not_input_refuses_equal_containing_inside_and_linked_paths(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\n")
    (tmp_path / "link").symlink_to(data)
    os.link(data / "train.csv", tmp_path / "hard.csv")
    for output, how in [(data, "is"), (tmp_path, "contains"), (data / "run", "lies inside"),
                        (tmp_path / "link", "is"), (tmp_path / "link" / "run", "lies inside"),
                        (data / "train.csv", "lies inside")]:
        with pytest.raises(OutputDirError, match=f"--output {output} {how} the --data"):
            outputs.check_not_input(output, {"--data": [data]})
    for output in (data / "train.csv", tmp_path / "hard.csv"):  # the file itself, or a hard link to it
        with pytest.raises(OutputDirError, match=f"--output {output} is the --data file"):
            outputs.check_not_input(output, {"--data": data / "train.csv"})
    outputs.check_not_input(tmp_path / "elsewhere", {"--data": [data], "--model": "bert-base-chinese"})
    outputs.check_not_input(tmp_path / "train.csv.out", {"--data": data / "train.csv"})  # a sibling is fine


def test_scratch_names_are_textclfs_and_only_they_count_as_leftovers(tmp_path):
    name = outputs.scratch(tmp_path / "best", "old").name
    assert name.startswith(".textclf-old-best-") and outputs.scratch_pid(tmp_path / name) == os.getpid()
    for user_file in ("notes.tmp", "download.partial", ".tmp-mine", ".old-draft"):
        assert outputs.RUN.foreign(_with(tmp_path / f"run-{user_file}", user_file)) == [user_file]
    assert outputs.RUN.foreign(_with(tmp_path / "run2", name)) == []


def _with(folder: Path, name: str) -> Path:
    folder.mkdir()
    (folder / name).write_text("x")
    return folder


def test_open_nofollow_refuses_links_folders_and_fifos(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OutputDirError, match="symbolic link"):
        outputs.open_nofollow(tmp_path / "link")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputDirError, match="is a folder"):
        outputs.open_nofollow(tmp_path / "folder")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputDirError, match="not a regular file"):  # and no hang
        outputs.open_nofollow(tmp_path / "fifo")
    assert target.read_text() == "keep me"


def test_write_file_atomically_replaces_a_link_never_its_target(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "out.json").symlink_to(target)
    planted = outputs.scratch(tmp_path / "out2.json")  # a link planted under the scratch name of the next write
    planted.symlink_to(target)
    outputs.write_file_atomically(tmp_path / "out.json", "{}")
    outputs.write_file_atomically(tmp_path / "out2.json", "[]")
    assert target.read_text() == "keep me"
    assert (tmp_path / "out.json").read_text() == "{}" and not (tmp_path / "out.json").is_symlink()
    assert (tmp_path / "out2.json").read_text() == "[]"


# ---- each rule through the command line, as the reliability pass found it broken --------------------------------

def test_overwrite_never_deletes_an_unmarked_project_holding_run_like_names(tmp_path, tiny_model_dir, capsys):
    project = tmp_path / "project"
    shutil.copytree(TINY, project / "data", ignore=shutil.ignore_patterns("*.md"))
    (project / "config.yaml").write_text("train:\n  max_steps: 1\n")
    (project / "runs").mkdir()
    before = _snapshot(project)
    # The data lies inside the output, and the folder carries no marker: two reasons, one refusal.
    code, err = _run(["train", "--config", project / "config.yaml", "--data", project / "data", "--model",
                      tiny_model_dir, "--output", project, "--overwrite", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and "contains the --" in err
    assert _snapshot(project) == before
    # The same project given as output for data elsewhere: refused for want of a marker.
    code, err = _run(["train", "--data", TINY, "--model", tiny_model_dir, "--output", project, "--overwrite",
                      "--quiet"], capsys)
    assert code == 2 and "no .textclf marker" in err
    assert _snapshot(project) == before


def test_train_never_replaces_its_own_input_model(workspace, tiny_model_dir, capsys):
    before = _snapshot(workspace / "run")
    code, err = _run(["train", "--data", workspace / "data", "--model", workspace / "run" / "best", "--output",
                      workspace / "run", "--overwrite", "--quiet"], capsys)
    assert code == 2 and "contains the --model folder" in err
    assert _snapshot(workspace / "run") == before


def test_train_api_never_replaces_its_own_input_model(workspace):
    import textclf

    before = _snapshot(workspace / "run")
    trainer = textclf.Trainer(model=str(workspace / "run" / "best"), data=str(workspace / "data"),
                              output_dir=workspace / "run", overwrite=True, progress=False,
                              config=textclf.TrainConfig(max_steps=1, device="cpu", precision="fp32",
                                                         recipe="fine-tune"))
    with pytest.raises(OutputDirError, match="contains the --model folder"):
        trainer.fit()
    assert _snapshot(workspace / "run") == before


@pytest.mark.parametrize("command", ["evaluate", "predict", "report"])
def test_a_report_never_replaces_the_file_it_reads(workspace, command, capsys):
    model = workspace / "run" / "best"
    args, victim = {
        "evaluate": (["evaluate", "--model", model, "--data", workspace / "data" / "test.csv"],
                     workspace / "data" / "test.csv"),
        "predict": (["predict", "--model", model, "--input", workspace / "texts.txt"], workspace / "texts.txt"),
        "report": (["report", workspace / "run"], workspace / "run" / "metrics.json"),
    }[command]
    before = _snapshot(workspace)
    code, err = _run([*args, "--output", victim], capsys)
    assert code == 2 and "Traceback" not in err and f"--output {victim} is the" in err, err
    assert _snapshot(workspace) == before


def test_overwrite_leaves_a_users_tmp_and_partial_files(workspace, tiny_model_dir, capsys, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(workspace / "run", out)
    (out / "draft.tmp").write_text("my notes")
    (out / "big-download.partial").write_text("half a file")
    code, err = _run(["train", "--data", workspace / "data", "--model", tiny_model_dir, "--output", out,
                      "--overwrite", "--quiet"], capsys)
    assert code == 2 and "big-download.partial, draft.tmp" in err
    assert (out / "draft.tmp").read_text() == "my notes" and (out / "best").is_dir()


def test_a_run_is_never_written_inside_a_folder_per_class_data_set(tmp_path, tiny_model_dir, capsys):
    classes = tmp_path / "classes"
    for label in ("sport", "news"):
        (classes / label).mkdir(parents=True)
        for i in range(6):
            (classes / label / f"{i}.txt").write_text(f"{label} text number {i}")
    before = _snapshot(classes)
    code, err = _run(["train", "--data", classes, "--model", tiny_model_dir, "--output", classes / "run",
                      "--quiet"], capsys)
    assert code == 2 and "lies inside the --data folder" in err
    assert _snapshot(classes) == before  # no class named "run" for the next training


def test_a_planted_lock_link_is_never_written_through(workspace, tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.LOCK_FILE).symlink_to(target)
    code, err = _run(["train", "--data", workspace / "data", "--model", tiny_model_dir, "--output", out,
                      "--quiet"], capsys)
    assert code == 2 and "symbolic link" in err and "Traceback" not in err
    assert target.read_text() == "keep me"
    (out / outputs.LOCK_FILE).unlink()
    (out / outputs.LOCK_FILE).mkdir()
    code, err = _run(["train", "--data", workspace / "data", "--model", tiny_model_dir, "--output", out,
                      "--quiet"], capsys)
    assert code == 2 and "is a folder where textclf keeps its run lock" in err and "Traceback" not in err


def test_every_command_declares_what_it_reads_and_writes():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    missing = []
    for name, sub in commands.items():
        subs = [sub] if not sub._subparsers else list(sub._subparsers._group_actions[0].choices.values())
        missing += [name for s in subs if s.get_default("paths") is None]
    assert not missing, f"commands without a paths= declaration (textclf.cli.check_paths): {missing}"


# ---- the property: random commands and output paths ------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# command -> (arguments without --output, the inputs an output may collide with, does it write a folder)
COMMANDS = {
    "train": (lambda w, m: ["train", "--data", w / "data", "--model", m, "--max-steps", "1", "--quiet",
                            "--device", "cpu", "--recipe", "fine-tune", "--config", w / "config.yaml"],
              lambda w, m: [w / "data", w / "data" / "train.csv", w / "config.yaml", m], True),
    "train-from-run": (lambda w, m: ["train", "--data", w / "data", "--model", w / "run" / "best", "--max-steps",
                                     "1", "--quiet", "--device", "cpu", "--recipe", "fine-tune"],
                       lambda w, m: [w / "run" / "best", w / "run", w / "data"], True),
    "lr-find": (lambda w, m: ["lr-find", "--data", w / "data", "--model", m, "--steps", "5", "--device", "cpu"],
                lambda w, m: [w / "data", w / "data" / "dev.csv", m], True),
    "evaluate": (lambda w, m: ["evaluate", "--model", w / "run" / "best", "--data", w / "data" / "test.csv"],
                 lambda w, m: [w / "data" / "test.csv", w / "run" / "best", w / "run" / "best" / "textclf.json"],
                 False),
    "predict": (lambda w, m: ["predict", "--model", w / "run" / "best", "--input", w / "texts.txt"],
                lambda w, m: [w / "texts.txt", w / "run" / "best", w / "run" / "best" / "labels.json"], False),
    "report": (lambda w, m: ["report", w / "run"],
               lambda w, m: [w / "run" / "metrics.json", w / "run" / "log.jsonl", w / "run" / "best"], False),
    "export": (lambda w, m: ["export", "--model", w / "run" / "best", "--data", w / "data" / "dev.csv"],
               lambda w, m: [w / "run" / "best", w / "run", w / "data"], True),
    "baseline": (lambda w, m: ["baseline", "--data", w / "data"], lambda w, m: [w / "data", w / "data" / "test.csv"],
                 True),
    "tokenizer": (lambda w, m: ["tokenizer", "train", "--data", w / "texts.txt", "--vocab-size", "200",
                                "--min-frequency", "1"], lambda w, m: [w / "texts.txt"], True),
}
# Commands slow enough that the property runs them only where the output is refused (the explicit tests above and
# the commands' own test files cover their successful runs).
SLOW = {"train", "train-from-run", "lr-find", "export"}
RELATIONS = ["is", "inside", "parent", "link", "link-inside", "fresh", "marked-foreign", "unmarked"]
OUTCOMES: list[int] = []


def _output_for(relation: str, source: Path, work: Path, case: int, folder: bool) -> Path:
    """An output path in ``relation`` to the input ``source`` (or unrelated to every input)."""
    if relation == "is":
        return source
    if relation == "inside":
        return (source if source.is_dir() else source.parent) / ("new-out" if folder else "new-out.json")
    if relation == "parent":
        return source.parent
    if relation in ("link", "link-inside"):
        link = work / f"link-{case}"
        link.symlink_to(source)
        return link if relation == "link" else link / "new-out"
    fresh = work / "fresh" / f"case-{case}"
    fresh.mkdir(parents=True)
    if relation == "fresh":
        return fresh / ("out" if folder else "out.json")
    (fresh / "out").mkdir()
    (fresh / "out" / "notes.txt").write_text("the user's")
    if relation == "marked-foreign":
        outputs.claim(fresh / "out", outputs.RUN)
    return fresh / "out"


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(sorted(COMMANDS)), relation=st.sampled_from(RELATIONS), pick=st.integers(0, 10),
       overwrite=st.booleans())
def test_random_outputs_exit_0_or_2_and_never_change_an_input(workspace, tiny_model_dir, capsys, command, relation,
                                                              pick, overwrite):
    args, sources, folder = COMMANDS[command]
    if command in SLOW and relation == "fresh":
        relation = "is"
    source = sources(workspace, tiny_model_dir)[pick % len(sources(workspace, tiny_model_dir))]
    case = len(OUTCOMES)
    output = _output_for(relation, source, workspace, case, folder)
    inputs = [workspace / "data", workspace / "texts.txt", workspace / "config.yaml", workspace / "run",
              tiny_model_dir]
    before = _snapshot(*inputs)
    argv = [*args(workspace, tiny_model_dir), "--output", output]
    if overwrite and command in ("train", "train-from-run", "lr-find", "export", "tokenizer"):
        argv.append("--overwrite")
    code, err = _run(argv, capsys)
    OUTCOMES.append(code)
    assert code in (0, 2), f"exit {code} for {argv}:\n{err}"
    assert "Traceback" not in err, err
    after = _snapshot(*inputs)
    for written in (output, output.with_suffix(".html")):  # a report may add its own page beside the run it reads
        if not written.is_dir():
            after.pop(str(written), None)
            before.pop(str(written), None)
    assert after == before, f"an input changed under {argv}"
    if relation in ("is", "parent", "link") or (relation in ("inside", "link-inside") and source.is_dir()):
        assert code == 2, f"{argv} wrote over, around or inside its input {source}"


def test_the_path_property_test_ran_some_commands_and_refused_others():
    assert 0 in OUTCOMES and 2 in OUTCOMES, OUTCOMES


# ---- found by review: the rules where they had gaps ---------------------------------------------------------------

def test_baseline_never_writes_over_a_training_run(workspace, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    before = _snapshot(run)
    code, err = _run(["baseline", "--data", workspace / "data", "--output", run], capsys)
    assert code == 2 and "Traceback" not in err and "best" in err
    assert _snapshot(run) == before  # the run's metrics.json and report.txt are its own still
    fresh = tmp_path / "baseline"
    assert _run(["baseline", "--data", workspace / "data", "--output", fresh], capsys)[0] == 0
    assert _run(["baseline", "--data", workspace / "data", "--output", fresh], capsys)[0] == 0  # its own: replaced
    assert (fresh / outputs.MARKER).is_file() and (fresh / "metrics.json").is_file()


def test_a_lock_on_a_removed_lock_file_is_never_taken_for_the_lock(tmp_path, monkeypatch):
    import fcntl
    import threading

    monkeypatch.setattr(outputs, "LOCK_WAIT_SECONDS", 1.0)
    folder = tmp_path / "run"
    folder.mkdir()
    first = open(folder / outputs.LOCK_FILE, "a+")  # the holder a second process waits for
    fcntl.flock(first, fcntl.LOCK_EX)
    outcome = {}

    def second():
        try:
            with outputs.locked(folder):
                outcome["got"] = True
        except OutputDirError as exc:
            outcome["refused"] = str(exc)

    waiter = threading.Thread(target=second)
    waiter.start()
    import time

    time.sleep(0.3)  # the waiter has opened the old file and retries
    (folder / outputs.LOCK_FILE).unlink()  # the holder exits, removing its lock file ...
    third = open(folder / outputs.LOCK_FILE, "a+")  # ... and a newcomer takes a fresh one at once
    fcntl.flock(third, fcntl.LOCK_EX)
    first.close()
    waiter.join(5)
    third.close()
    assert outcome.get("refused") and "in use" in outcome["refused"], outcome


def test_an_atomic_write_keeps_the_files_permissions(tmp_path):
    path = tmp_path / "private.jsonl"
    path.write_text("old")
    path.chmod(0o600)
    outputs.write_file_atomically(path, "new")
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o600


def test_run_records_are_replaced_whole_never_written_through_a_planted_link(tmp_path):
    """config.yaml, cv.json, fold.json, tune.json and export records go through the atomic write: a link planted at
    the name is replaced, and the file it pointed at is untouched."""
    from textclf.config import save_mapping

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n", encoding="utf-8")
    for name in ("config.yaml", "cv.json"):
        (tmp_path / name).symlink_to(victim)
        save_mapping({"train": {"epochs": 2}}, tmp_path / name)
        assert not (tmp_path / name).is_symlink() and "epochs" in (tmp_path / name).read_text(encoding="utf-8")
    assert victim.read_text(encoding="utf-8") == "keep me\n"
