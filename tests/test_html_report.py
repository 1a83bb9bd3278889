"""report.html: one self-contained page per run, written at the end of training and by ``textclf report``; it
loads in a real headless browser with no console errors and renders something."""

from __future__ import annotations

import re
import shutil
import subprocess

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
