"""The ``textclf`` command line, run as a user runs it: ``python -m textclf ...`` in a subprocess.

One tiny training run (a 2-layer BERT on tests/data/tiny, a few optimizer steps) is shared by the module; it
is started from a config file with flags on top, so the same run checks flag-over-file precedence. Error paths
that fail before any model is loaded also run in-process through ``cli.main`` to keep the suite fast.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from textclf import cli
from textclf.config import DataConfig, ModelConfig, RunPaths, TrainConfig, field_docs

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny"
TINY_LABELS = sorted(["finance", "realty", "stocks", "education", "science", "society", "politics", "sports", "game",
                      "entertainment"])


def run_cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m textclf ARGS`` from the repository root, with textclf importable from the checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run([sys.executable, "-m", "textclf", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, a message naming what is wrong, and no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in:\n{result.stderr}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """Train from a config file plus overriding flags; returns the output folder."""
    work = tmp_path_factory.mktemp("cli")
    config_file = work / "cfg.yaml"
    config_file.write_text(yaml.safe_dump({
        "run": {"data": "tests/data/tiny", "output": str(work / "from-file")},
        "model": {"name": "minilm", "dropout": 0.2},
        "train": {"epochs": 1, "lr": 1.0e-3, "batch_size": 16, "max_length": 32, "seed": 3, "log_steps": 2,
                  "eval_batch_size": 64},
    }))
    out = work / "run"
    result = run_cli("train", "--config", config_file, "--model", tiny_model_dir, "--output", out,
                     "--lr", "2e-3", "--max-steps", "6", "--no-group-by-length", "--quiet")
    assert_ok(result)
    assert "accuracy" in result.stdout and f"TensorBoard: tensorboard --logdir {out / 'runs'}" in result.stdout
    assert "time: " in result.stdout and str(out / "timings.json") in result.stdout
    return out


def test_train_writes_a_complete_run(run_dir, tiny_model_dir):
    for name in ("best", "last", "config.yaml", "metrics.json", "report.txt", "log.jsonl", "runs"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6
    assert metrics["test"]["num_rows"] == 50 and metrics["dev"]["num_rows"] == 50


def test_flags_override_the_config_file(run_dir, tiny_model_dir):
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 2e-3  # flag over file
    assert resolved["train"]["max_steps"] == 6  # flag only
    assert resolved["train"]["group_by_length"] is False  # --no-... form of a boolean
    assert resolved["model"]["name"] == str(tiny_model_dir)  # --model over model.name in the file
    assert resolved["run"]["output"] == str(run_dir)  # --output over run.output in the file
    assert resolved["train"]["seed"] == 3 and resolved["train"]["batch_size"] == 16  # file only
    assert resolved["model"]["dropout"] == 0.2
    assert resolved["train"]["weight_decay"] == TrainConfig().weight_decay  # default
    # Every field of every section is written, so the file fully describes the run.
    for section, klass in (("run", RunPaths), ("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        assert set(resolved[section]) == {f.name for f in dataclasses.fields(klass)}


def test_written_config_reproduces_the_run(run_dir, tmp_path):
    again = tmp_path / "again"
    assert_ok(run_cli("train", "--config", run_dir / "config.yaml", "--output", again, "--quiet"))
    first = yaml.safe_load((run_dir / "config.yaml").read_text())
    second = yaml.safe_load((again / "config.yaml").read_text())
    assert first.pop("run").pop("output") == str(run_dir)
    assert second.pop("run").pop("output") == str(again)
    assert first == second
    # Same config, same seed, same machine: the same training trajectory.
    history = [json.loads((d / "metrics.json").read_text())["history"] for d in (run_dir, again)]
    assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]]
    assert [h["loss"] for h in history[0]] == pytest.approx([h["loss"] for h in history[1]], rel=1e-3)


def test_evaluate_matches_the_training_report(run_dir, tmp_path):
    report_file = tmp_path / "report.json"
    result = run_cli("evaluate", "--model", run_dir / "best", "--data", TINY / "test.csv", "--output", report_file)
    assert_ok(result)
    assert "macro avg" in result.stdout and "confusion matrix" in result.stdout
    report = json.loads(report_file.read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert report["num_rows"] == 50
    assert report["accuracy"] == pytest.approx(trained["accuracy"])
    assert report["macro_f1"] == pytest.approx(trained["macro_f1"])
    # ... and a page to look at beside the JSON: scores, the sortable per-class table, the confusion matrix
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Per class" in page and "Confusion matrix" in page and "data:image/png;base64," in page
    assert "report.html" in result.stderr
    assert_usage_error(run_cli("evaluate", "--model", run_dir / "best", "--data", TINY / "test.csv", "--output",
                               tmp_path / "page.html"), "name the JSON file")


def test_predict_texts_to_stdout(run_dir):
    result = run_cli("predict", "--model", run_dir / "best", "央行宣布降准", "湖人大胜勇士", "--top-k", "3")
    assert_ok(result)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["text"] for row in rows] == ["央行宣布降准", "湖人大胜勇士"]
    for row in rows:
        assert row["label"] in TINY_LABELS and 0.0 <= row["score"] <= 1.0
        assert len(row["top_k"]) == 3 and row["top_k"][0]["label"] == row["label"]
        assert row["truncated"] is False


def test_predict_file_to_jsonl(run_dir, tmp_path, capsys):
    texts = ["快讯：N蓝标开盘涨28.77%", "2024年考研报名人数创新高", "北京二手房成交量回升"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    # In-process (the subprocess path is covered above): same entry point, no second interpreter start-up.
    code, stdout, _ = run_main(capsys, "predict", "--model", run_dir / "best", "--input", tmp_path / "texts.txt",
                               "--output", out)
    assert code == 0 and f"wrote 3 predictions to {out}" in stdout
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == texts
    assert all(row["label"] in TINY_LABELS and len(row["top_k"]) == 1 for row in rows)


def test_predict_top_k_is_bounded_by_the_labels_as_in_the_service(run_dir, capsys):
    import textclf

    code, _, err = run_main(capsys, "predict", "--model", run_dir / "best", "--top-k", "1000", "a title")
    labels = len(textclf.Predictor.from_pretrained(run_dir / "best").label_map)
    assert code == 2 and f"--top-k must be between 1 and {labels} (the model's labels), got 1000" in err
    with pytest.raises(textclf.ConfigError, match="top_k must be >= 1, got 0"):
        textclf.Predictor.from_pretrained(run_dir / "best").predict(["a title"], top_k=0)


def test_info(run_dir, tiny_model_dir):
    result = run_cli("info", "--model", run_dir / "best")
    assert_ok(result)
    info = json.loads(result.stdout)
    assert info["labels"] == TINY_LABELS and info["multi_label"] is False
    assert info["base_model"] == str(tiny_model_dir)
    assert info["train_config"]["lr"] == 2e-3 and info["train_config"]["max_length"] == 32
    assert set(info["dev"]) >= {"accuracy", "macro_f1"} and set(info["test"]) >= {"accuracy", "macro_f1"}


# ---- errors: exit status 2, one clear message, no traceback ------------------------------------------------------


def test_missing_data_file_exits_2(tmp_path, tiny_model_dir):
    result = run_cli("train", "--data", "no/such/train.csv", "--model", tiny_model_dir, "--output", tmp_path / "x")
    assert_usage_error(result, "no/such/train.csv", "no such file or directory")
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph


def test_unknown_flag_exits_2():
    result = run_cli("train", "--data", "tests/data/tiny", "--learning-rate", "1e-4")
    assert_usage_error(result, "unrecognized arguments: --learning-rate", "usage: textclf")


def test_bad_flag_value_exits_2():
    result = run_cli("train", "--data", "tests/data/tiny", "--epochs", "three")
    assert_usage_error(result, "--epochs", "expected float, got 'three'")


def run_main(capsys, *args) -> tuple[int, str, str]:
    """``cli.main`` in-process (for failures that happen before any model is loaded)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse exits for --help and usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--data", "tests/data/tiny", "--output", "{tmp}/x", "--lr", "-1"], ["train.lr: must be > 0"]),
        (["train", "--data", "tests/data/tiny", "--output", "{tmp}/x", "--precision", "fp8"], ["train.precision"]),
        (["train", "--output", "{tmp}/x"], ["no training data", "--data"]),
        (["train", "--data", "tests/data/tiny"], ["no output folder", "--output"]),
        (["train", "--config", "{tmp}/nope.yaml"], ["nope.yaml does not exist"]),
        (["train", "--config", "{tmp}/typo.yaml", "--data", "tests/data/tiny"], ["unknown field(s) ['lrate']", "lr"]),
        (["train", "--data", "tests/data/tiny", "--output", "{tmp}/x", "--text-column", "body"], ["body"]),
        (["evaluate", "--model", "{tmp}", "--data", "tests/data/tiny/test.csv"], ["not a textclf model folder"]),
        (["predict", "--model", "{tmp}"], ["--input FILE or texts"]),
        (["info", "--model", "{tmp}"], ["not a textclf model folder"]),
        (["evaluate", "--data", "x.csv"], ["the following arguments are required: --model"]),
        (["serve-me"], ["invalid choice: 'serve-me'"]),
        # values that used to be accepted silently, or ended in a traceback
        (["predict", "--model", "{tmp}", "--batch-size", "0", "hi"], ["--batch-size", "must be a number >= 1, got 0"]),
        (["predict", "--model", "{tmp}", "--top-k", "0", "hi"], ["--top-k", "must be a number >= 1, got 0"]),
        (["predict", "--model", "{tmp}", "--top-k", "-3", "hi"], ["--top-k", "must be a number >= 1, got -3"]),
        (["predict", "--model", "{tmp}", "--output", "{tmp}", "hi"], ["is a folder; give a file name inside it"]),
        (["predict", "--model", "{tmp}", "--output", "{tmp}/missing/p.jsonl", "hi"],
         ["missing does not exist; create the folder"]),
        (["predict", "--model", "{tmp}", "fine", "   "], ["text 2 is empty"]),
        (["predict", "--model", "{tmp}", "bad \udcff byte"], ["text 1 is not valid UTF-8 (at character 5)"]),
        (["evaluate", "--model", "{tmp}", "--data", "x.csv", "--output", "{tmp}/missing/r.json"],
         ["missing does not exist"]),
        (["evaluate", "--model", "{tmp}", "--data", "x.csv", "--batch-size", "-1"], ["must be a number >= 1"]),
        (["export", "--model", "{tmp}", "--output", "{tmp}/e", "--num-samples", "0"],
         ["--num-samples", ">= 1, got 0"]),
        (["export", "--model", "{tmp}", "--output", "{tmp}/e", "--atol", "nan"], ["--atol", "got nan"]),
        (["export", "--model", "{tmp}", "--output", "{tmp}/e", "--min-agreement", "1.5"],
         ["between 0 and 1, got 1.5"]),
        (["export", "--model", "{tmp}", "--output", "{tmp}/e", "--opset", "-2"], ["--opset", ">= 1, got -2"]),
        # output folders that are files, or under a file: refused before any data or model is read
        (["train", "--data", "tests/data/tiny", "--output", "{tmp}/typo.yaml"], ["typo.yaml is a file, not a folder"]),
        (["train", "--data", "tests/data/tiny", "--output", "{tmp}/typo.yaml/run"],
         ["typo.yaml is a file, so no folder can be made under it"]),
        (["export", "--model", "{tmp}", "--output", "{tmp}/typo.yaml"], ["typo.yaml is a file, not a folder"]),
        (["baseline", "--data", "tests/data/tiny", "--output", "{tmp}/typo.yaml/b"], ["no folder can be made under"]),
        (["audit", "--data", "tests/data/tiny", "--output", "{tmp}/typo.yaml"], ["typo.yaml is a file, not a folder"]),
        (["pretrain", "--data", "tests/data/tiny", "--output", "{tmp}/typo.yaml"], ["typo.yaml is a file"]),
        (["train", "--data", "tests/data/tiny", "--output", "{tmp}/x", "--seeds", "1,2", "--cv", "3"],
         ["--seeds (a seed ensemble) and --cv (cross-validation) are separate runs"]),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(capsys, tmp_path, args, needles):
    (tmp_path / "typo.yaml").write_text("train:\n  lrate: 0.001\n")
    code, out, err = run_main(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


# ---- help ------------------------------------------------------------------------------------------------------


def flags_of(subcommand: str) -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[subcommand]
    return {opt for action in sub._actions for opt in action.option_strings if opt.startswith("--")}


@pytest.mark.parametrize("subcommand", ["train", "evaluate", "predict", "info"])
def test_help_lists_every_option(capsys, subcommand):
    code, out, _ = run_main(capsys, subcommand, "--help")
    assert code == 0
    assert out.startswith(f"usage: textclf {subcommand}")
    for flag in flags_of(subcommand):
        assert re.search(rf"(^|[\s\[|]){re.escape(flag)}\b", out), f"{flag} missing from {subcommand} --help"


def test_train_help_is_exact(capsys):
    """Each config field's help is its documented comment and its real default."""
    code, out, _ = run_main(capsys, "train", "--help")
    flat = "".join(out.split())  # argparse wraps lines (also after hyphens): compare without whitespace
    for section, klass in cli.SECTIONS:
        docs = field_docs(klass)
        for f in dataclasses.fields(klass):
            flag = cli.FLAG_NAMES.get((section, f.name), "--" + f.name.replace("_", "-"))
            assert flag in flat
            assert "".join(f"{docs[f.name]} (default: {f.default})".split()) in flat, f"{section}.{f.name}"
    for required in ("--data", "--dev", "--test", "--model", "--output", "--config", "--epochs", "--lr",
                     "--batch-size", "--max-length", "--grad-accum", "--precision", "--seed", "--max-steps",
                     "--eval-steps", "--save-steps", "--patience", "--freeze-layers-below", "--resume"):
        assert required in flags_of("train")


def test_version_and_top_level_help(capsys):
    from textclf import __version__

    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"textclf {__version__}"
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and all(name in out for name in ("train", "evaluate", "predict", "info"))


def test_json_config_and_flag_precedence_in_process(tmp_path):
    """A JSON config file works like YAML; flags win; fields left alone keep the file's or the default value."""
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"run": {"data": "a.csv", "output": "out"},
                                       "data": {"text_column": "sentence", "strict": True},
                                       "train": {"lr": 3e-5, "epochs": 4, "patience": 2}}))
    args = cli.build_parser().parse_args(["train", "--config", str(config_file), "--epochs", "2", "--no-strict",
                                          "--patience", "none", "--max-grad-norm", "none"])
    config = cli.resolve_run_config(args)
    assert (config.run.data, config.run.output, config.data.text_column) == ("a.csv", "out", "sentence")
    assert config.train.lr == 3e-5 and config.train.epochs == 2.0
    assert config.data.strict is False and config.train.patience is None and config.train.max_grad_norm is None
    assert config.model == ModelConfig()


def test_evaluate_prints_the_headline_scores_the_docs_promise(run_dir):
    result = run_cli("evaluate", "--model", run_dir / "best", "--data", TINY / "test.csv")
    assert_ok(result)
    headline = result.stdout.splitlines()[0]
    assert headline.startswith("50 rows: accuracy ") and "macro F1" in headline and "micro F1" in headline


def test_evaluate_reads_a_test_file_as_the_model_was_trained_to(tmp_path, tiny_model_dir):
    """A model trained with --label-column topic reads the test file's topic column without the flag again."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "dev", "test"):
        rows = list(csv.DictReader((TINY / f"{name}.csv").open(encoding="utf-8")))
        with (data / f"{name}.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["title", "topic"])
            writer.writerows([row["text"], row["label"]] for row in rows)
    out = tmp_path / "run"
    assert_ok(run_cli("train", "--data", data, "--model", tiny_model_dir, "--output", out, "--text-column", "title",
                      "--label-column", "topic", "--max-steps", "2", "--max-length", "32", "--quiet"))
    result = run_cli("evaluate", "--model", out / "best", "--data", data / "test.csv")
    assert_ok(result)
    assert result.stdout.startswith("50 rows: accuracy")
    # an explicit flag still wins (and names the missing column)
    assert_usage_error(run_cli("evaluate", "--model", out / "best", "--data", data / "test.csv", "--label-column",
                               "label"), "label")


def test_evaluate_scores_an_exported_model(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    export = tmp_path / "onnx"
    assert_ok(run_cli("export", "--model", run_dir / "best", "--output", export, "--format", "onnx"))
    report_file = tmp_path / "onnx-report.json"
    result = run_cli("evaluate", "--model", export, "--data", TINY / "test.csv", "--output", report_file)
    assert_ok(result)
    exported, trained = json.loads(report_file.read_text()), json.loads((run_dir / "metrics.json").read_text())["test"]
    assert exported["num_rows"] == 50 and exported["accuracy"] == pytest.approx(trained["accuracy"], abs=0.02)
    assert_usage_error(run_cli("evaluate", "--model", export, "--data", TINY / "test.csv", "--errors",
                               tmp_path / "e.csv"), "--errors needs the training model folder")


def test_predict_shows_progress_on_a_terminal_and_keeps_stdout_clean(run_dir, tmp_path):
    """As a user sees it: stderr is a real pseudo-terminal, so tqdm draws its bar there; stdout holds only JSON."""
    import fcntl
    import pty
    import struct
    import termios

    (tmp_path / "texts.txt").write_text("\n".join(f"新闻 {i}" for i in range(600)) + "\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [sys.executable, "-m", "textclf", "predict", "--model", str(run_dir / "best"), "--input",
            str(tmp_path / "texts.txt"), "--batch-size", "16"]
    for quiet in (False, True):
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a window has a size
        try:
            run = subprocess.run(args + (["--quiet"] if quiet else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=terminal, timeout=300)
            os.close(terminal)
            seen = b""
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal's other end is closed: all read
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(controller)
        assert run.returncode == 0
        assert len([line for line in run.stdout.decode().splitlines() if line.startswith("{")]) == 600
        assert (b"600/600" in seen) is not quiet, seen.decode(errors="replace")


def test_train_writes_where_its_time_went(run_dir):
    timings = json.loads((run_dir / "timings.json").read_text())
    names = set(timings["phases"])
    assert {"startup", "read data", "load model", "tokenize", "epoch 1", "evaluate dev", "save last",
            "final evaluation", "reports"} <= names, names
    assert timings["total_s"] == pytest.approx(sum(timings["phases"].values()), abs=0.05)
    assert 0 < timings["phases"]["startup"] < timings["total_s"]


def test_the_command_exits_quickly_with_its_code_its_output_and_its_exit_handlers(tmp_path):
    """cli.run skips Python's module teardown, but not atexit handlers, buffered output or the exit code."""
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
            "print('buffered line')\n"
            f"sys.argv = ['textclf', 'train', '--data', {str(tmp_path / 'missing.csv')!r}, '--output', "
            f"{str(tmp_path / 'out')!r}]\n"
            "from textclf.cli import run\nrun()\nprint('never reached')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "buffered line\n"  # written to a pipe (block-buffered) and still flushed
    assert "missing.csv" in done.stderr and "Traceback" not in done.stderr
    assert marker.read_text() == "ran"
