"""Chinese label names in reports and pictures: text tables align by display width, and plots draw the names with
a font that has their glyphs, or class indices with a note, never empty boxes and per-glyph warnings."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from textclf.eval.calibration import plot_confusion
from textclf.eval.fonts import axis_labels
from textclf.eval.metrics import display_width, report_from_confusion

NAMES = ["体育", "娱乐", "财经新闻", "sports"]
COUNTS = np.array([[5, 1, 0, 0], [0, 6, 1, 0], [1, 0, 7, 0], [0, 0, 0, 3]])


def test_display_width_counts_wide_characters_twice():
    assert display_width("sports") == 6 and display_width("体育") == 4 and display_width("财经news") == 8


def test_the_text_report_aligns_chinese_label_names():
    text = report_from_confusion(COUNTS, NAMES).format()
    table = text.split("\n\n")[1].splitlines()  # the per-class rows
    assert len(table) == len(NAMES)
    assert len({display_width(line) for line in table}) == 1, table
    matrix = text.split("confusion matrix (rows: true, columns: predicted)\n")[1].splitlines()
    assert len({display_width(line) for line in matrix}) == 1, matrix


def test_axis_labels_keep_latin_names_and_never_lose_chinese_ones():
    assert axis_labels(["sports", "news"]).names == ["sports", "news"]
    chinese = axis_labels(NAMES)
    if chinese.font is None:  # no installed font has the glyphs: indices, and a note saying where the names are
        assert chinese.names == ["0", "1", "2", "3"] and "labels.json" in chinese.note
    else:
        assert chinese.names == NAMES and chinese.note is None


def test_a_confusion_plot_of_chinese_labels_prints_no_glyph_warnings(tmp_path, caplog):
    pytest.importorskip("matplotlib")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        plot_confusion(tmp_path / "confusion.png", COUNTS, NAMES)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "missing from font" in m], messages
    assert (tmp_path / "confusion.png").stat().st_size > 1000
