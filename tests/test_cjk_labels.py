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


def test_label_names_with_dollar_signs_are_drawn_as_written(tmp_path, monkeypatch):
    """matplotlib reads text between two `$` as mathtext: `$\\frac$` raised at savefig (after training, before the
    reports) and `$5-$10` lost its dollars. Every picture draws label names and titles as plain text."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from textclf.eval.calibration import CalibrationBins, plot_reliability

    drawn = []
    save = Figure.savefig

    def savefig(figure, *args, **kwargs):
        save(figure, *args, **kwargs)
        texts = [t for axis in figure.axes for t in (*axis.get_xticklabels(), *axis.get_yticklabels(), axis.title)]
        drawn.extend(t._preprocess_math(t.get_text()) for t in texts if t.get_text())  # (what is drawn, mathtext?)

    monkeypatch.setattr(Figure, "savefig", savefig)
    names = [r"$\frac$", "$5-$10", "a$b^$c", "plain"]
    plot_confusion(tmp_path / "small.png", np.eye(4, dtype=int) * 3 + 1, names, "run $x$")
    assert {(name, False) for name in names} <= set(drawn) and ("run $x$", False) in drawn
    assert not [text for text, math in drawn if math]
    many = [f"${i}^$" for i in range(100)]  # above 60 classes: the most frequent confusions, as bars
    counts = np.eye(100, dtype=int) * 5
    counts[3, 7] = 4
    drawn.clear()
    plot_confusion(tmp_path / "many.png", counts, many)
    assert ("$3^$ -> $7^$", False) in drawn and not [text for text, math in drawn if math]
    bins = CalibrationBins()
    bins.update(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]))
    plot_reliability(tmp_path / "reliability.png", bins, title="reliability ($5-$10)")
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("small.png", "many.png",
                                                                              "reliability.png"))
