"""report.html: one self-contained page per run, written at the end of training and by ``textclf report``; it
loads in a real headless browser with no console errors and renders something, and a damaged metrics.json is one
message naming the file and the field (exit 2), with the folder left as it was."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import textclf
from textclf import cli
from textclf.eval.html_report import write_html_report

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    config = textclf.TrainConfig(max_steps=6, eval_steps=3, log_steps=2, max_length=32, device="cpu",
                                 precision="fp32")
    trainer = textclf.Trainer(str(tiny_model_dir), str(tiny_data_dir), out, config, progress=False)
    trainer.fit()
    return trainer, out


def test_training_writes_a_self_contained_report(run):
    trainer, out = run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched at view time
    assert page.count("data:image/png;base64,") >= 3  # confusion matrix, curves, reliability
    for name in trainer.label_map.names:  # the per-class table, Chinese text included as is
        assert f">{name}</td>" in page
    assert "Most confident errors" in page and 'class="sortable"' in page and "<script>" in page


def test_the_report_command_rewrites_it_and_refuses_a_folder_without_a_run(run, tmp_path, capsys):
    _, out = run
    target = tmp_path / "page.html"
    assert cli.main(["report", str(out), "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert cli.main(["report", str(tmp_path)]) == 2 and "holds no metrics.json" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: install it (Debian: apt install chromium) "
                                              "to check report.html in a real headless browser")
def test_the_report_loads_in_a_headless_browser_without_errors(run, tmp_path):
    from PIL import Image

    _, out = run
    page = write_html_report(out, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--window-size=1000,1400", f"--screenshot={shot}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page: text, tables and pictures


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(err: str, command: str) -> str:
    """The one error line of a failed command; no traceback, nothing else said as an error."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"textclf {command}: error: "), err
    return errors[0]


# metrics.json as a torn write or a hand edit leaves it; the message names the file and the field.
DAMAGED_METRICS = [
    pytest.param('{"best_step": 6, "test": {"accura', r"metrics\.json cannot be read .*damaged or truncated",
                 id="truncated"),
    pytest.param("[1, 2]", r"metrics\.json holds a JSON list, not an object of scores", id="list-at-top-level"),
    pytest.param('{"test": 5}', r"metrics\.json: field test should be an object of scores, got the number 5",
                 id="split-is-a-number"),
    pytest.param('{"test": {"per_class": "x"}}',
                 r"metrics\.json: field test\.per_class should be an object of per-class scores, got a string \"x\"",
                 id="per-class-is-a-string"),
    pytest.param('{"dev": {"per_class": {"sports": {"precision": 1, "recall": 1, "f1": "high", "support": 5}}}}',
                 r"metrics\.json: field dev\.per_class\['sports'\]\.f1 should be a number, got a string \"high\"",
                 id="score-is-a-string"),
    pytest.param('{"test": {"per_class": {"sports": {"precision": 1, "recall": 1, "f1": 1}}}}',
                 r"metrics\.json: field test\.per_class\['sports'\]\.support is missing", id="support-missing"),
    pytest.param('{"best_step": 6, "global_step": "six"}',
                 r"metrics\.json: field global_step should be an integer, got a string \"six\"",
                 id="step-is-a-string"),
    pytest.param('{"test": {"accuracy": true}}', r"metrics\.json: field test\.accuracy should be a number, got a "
                 r"boolean true", id="score-is-a-boolean"),
    pytest.param('{"calibration": {"temperature": [1]}}',
                 r"metrics\.json: field calibration\.temperature should be a number, got a list \[1\]",
                 id="temperature-is-a-list"),
    pytest.param('{"baseline": {"test": []}}', r"metrics\.json: field baseline\.test should be an object of scores",
                 id="baseline-split-is-a-list"),
]


@pytest.mark.parametrize("content, pattern", DAMAGED_METRICS)
def test_a_damaged_metrics_file_is_one_message_naming_the_file_and_field(run, tmp_path, capsys, content, pattern):
    _, out = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    (folder / "metrics.json").write_text(content, encoding="utf-8")
    before = snapshot(folder)
    assert cli.main(["report", str(folder)]) == 2
    message = one_error(capsys.readouterr().err, "report")
    assert str(folder / "metrics.json") in message and re.search(pattern, message), message
    assert snapshot(folder) == before  # report.html was not rewritten, nothing else written


def test_damaged_side_files_are_named_or_left_out(run, tmp_path, capsys):
    _, out = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    (folder / "errors.csv").write_text("text,label\nx,y\n", encoding="utf-8")  # a column short
    assert cli.main(["report", str(folder)]) == 2
    message = one_error(capsys.readouterr().err, "report")
    assert re.search(r"errors\.csv has no column 'predicted'", message), message
    (folder / "errors.csv").unlink()
    # curves and the subtitle are decoration: a torn log or a damaged best/textclf.json draws less, no error
    (folder / "log.jsonl").write_text('[1]\n"x"\n{"step": "a", "train/loss": 1}\n', encoding="utf-8")
    (folder / "best" / "textclf.json").write_text("[]", encoding="utf-8")
    assert cli.main(["report", str(folder)]) == 0, capsys.readouterr().err
