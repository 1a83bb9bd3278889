"""Chinese label names in reports and pictures: text tables align by display width, and plots draw the names with
a font that really has their glyphs, or class numbers with a key and one warning, never boxes.

The picture tests look at what the user sees: they render ``confusion.png`` through :func:`plot_confusion` and check
the drawn tick labels twice, independently of :mod:`textclf.eval.fonts`: in the PNG's pixels (two different Chinese
names must not come out as the same picture, as boxes do) and in the drawing font's outlines, read with fontTools (each
character's glyph differs from the font's .notdef box and from the other characters' glyphs). matplotlib bundles
``LastResortHE``, whose character map claims every code point but whose glyph for any ideograph is one box naming the
CJK block; that glyph differs from its .notdef, so only the second comparison catches it.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings

import numpy as np
import pytest

from textclf.eval import fonts
from textclf.eval.calibration import plot_confusion
from textclf.eval.fonts import axis_labels
from textclf.eval.metrics import display_width, report_from_confusion

NAMES = ["体育", "娱乐", "财经新闻", "sports"]
COUNTS = np.array([[5, 1, 0, 0], [0, 6, 1, 0], [1, 0, 7, 0], [0, 0, 0, 3]])
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# The fallback's warning is tested where it is expected; elsewhere (machines without a CJK font) it is noise.
pytestmark = pytest.mark.filterwarnings("ignore::textclf.eval.fonts.LabelFontWarning")
NO_CJK_FONT = ("no installed font has real Chinese glyphs (matplotlib's LastResortHE claims every code point but "
               "draws boxes); install one (e.g. apt-get install fonts-noto-cjk) to test names drawn in a CJK font")


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


# ---- an independent judge of fonts: fontTools outlines, not the code under test -----------------------------------


def _outline(glyph_set, name) -> tuple:
    from fontTools.pens.recordingPen import RecordingPen

    pen = RecordingPen()
    glyph_set[name].draw(pen)
    return tuple((op, tuple(args)) for op, args in pen.value)


def _real_glyphs(path: str, text: str) -> bool:
    """Whether the font file at ``path`` (its first face, the one matplotlib draws) has a real glyph for every
    character of ``text``: mapped, with an outline that is neither the .notdef box nor another character's."""
    from fontTools.ttLib import TTFont

    try:
        font = TTFont(path, fontNumber=0, lazy=True)
        cmap = font.getBestCmap() or {}
        glyph_set = font.getGlyphSet()
        notdef = _outline(glyph_set, font.getGlyphOrder()[0])
        chars = sorted(set(text) - {" "})
        if not all(ord(c) in cmap for c in chars):
            return False
        outlines = [_outline(glyph_set, cmap[ord(c)]) for c in chars]
    except Exception:  # noqa: BLE001 -- a font fontTools cannot read is no evidence either way: not counted
        return False
    return all(o and o != notdef for o in outlines) and len(set(outlines)) == len(chars)


@functools.cache
def _real_cjk_fonts(text: str = "".join(NAMES)) -> tuple[str, ...]:
    from matplotlib import font_manager

    paths = dict.fromkeys(f.fname for f in font_manager.fontManager.ttflist)
    return tuple(p for p in paths if _real_glyphs(p, "".join(CJK.findall(text))))


# ---- rendering confusion.png and reading back its tick labels ----------------------------------------------------


def _render(tmp_path, monkeypatch, names=NAMES, counts=COUNTS, name="confusion.png"):
    """Draw ``confusion.png`` through textclf's plotting path; returns ({y tick label: (font file, the label's
    ink in the saved PNG)}, the figure's other texts)."""
    pytest.importorskip("matplotlib")
    import matplotlib.image
    from matplotlib import font_manager
    from matplotlib.figure import Figure

    captured = []
    save = Figure.savefig

    def savefig(figure, *args, **kwargs):
        save(figure, *args, **kwargs)
        renderer = figure.canvas.get_renderer()
        labels = [(t.get_text(), t.get_fontproperties(), t.get_window_extent(renderer))
                  for axis in figure.axes for t in axis.get_yticklabels() if t.get_text()]
        texts = [*figure.texts, *(t for axis in figure.axes for t in axis.texts)]  # the key is an annotation
        captured.append((labels, [t.get_text() for t in texts]))

    monkeypatch.setattr(Figure, "savefig", savefig)
    path = tmp_path / name
    plot_confusion(path, counts, names)
    image = matplotlib.image.imread(str(path))[..., :3]
    labels, texts = captured[-1]
    drawn = {}
    for text, prop, box in labels:
        top, bottom = image.shape[0] - int(np.ceil(box.y1)) - 1, image.shape[0] - int(np.floor(box.y0)) + 1
        crop = image[max(top, 0):bottom, max(int(np.floor(box.x0)) - 1, 0):int(np.ceil(box.x1)) + 1]
        ink = crop.min(axis=2) < 0.6
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] if len(rows) else ink[:0, :0]
        font = prop.get_file() or font_manager.findfont(prop)
        drawn[text] = (str(font), ink)
    return drawn, texts


def _assert_drawn_as_themselves(drawn):
    """Every Chinese label drawn is its own glyphs: real outlines in the font that drew it, and distinct pixels."""
    chinese = [name for name in drawn if CJK.search(name)]
    for name in chinese:
        font, ink = drawn[name]
        assert ink.any(), f"{name!r} left no ink in confusion.png"
        assert _real_glyphs(font, "".join(CJK.findall(name))), f"{name!r} was drawn in {font}, which has boxes for it"
    two = [name for name in chinese if len(name) == 2]  # same length: boxes give the same picture
    assert len(two) == 2, drawn
    similarity = _similarity(*(drawn[name][1] for name in two))
    # Measured: 0.98 for two names in LastResortHE's boxes, 0.30 for the same names in WenQuanYi Micro Hei.
    assert similarity < 0.9, f"{two} look the same in confusion.png (correlation {similarity:.2f}): boxes"


def _similarity(a: np.ndarray, b: np.ndarray, reach: int = 2) -> float:
    """The best normalised correlation of two ink masks over shifts of up to ``reach`` pixels: glyphs are placed
    at 1/64 pixel, so the same glyphs drawn at two tick marks differ by a pixel here and there."""
    height, width = max(a.shape[0], b.shape[0]) + 2 * reach, max(a.shape[1], b.shape[1]) + 2 * reach
    fixed = np.zeros((height, width))
    fixed[reach:reach + a.shape[0], reach:reach + a.shape[1]] = a
    fixed -= fixed.mean()
    best = -1.0
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            moved = np.zeros((height, width))
            moved[reach + dy:reach + dy + b.shape[0], reach + dx:reach + dx + b.shape[1]] = b
            moved -= moved.mean()
            best = max(best, float((fixed * moved).sum() / np.sqrt((fixed**2).sum() * (moved**2).sum())))
    return best


def test_confusion_png_never_draws_chinese_label_names_as_boxes(tmp_path, monkeypatch):
    """Whatever fonts the machine has: the Chinese names are drawn with real glyphs, or (only when no installed font
    has them) the axes show class numbers and the figure a key."""
    drawn, texts = _render(tmp_path, monkeypatch)
    if any(CJK.search(name) for name in drawn):
        _assert_drawn_as_themselves(drawn)
    else:
        assert not _real_cjk_fonts(), f"{_real_cjk_fonts()} draws the names, yet the picture shows numbers"
        assert list(drawn) == ["0", "1", "2", "3"]
        assert [t for t in texts if "labels.json" in t and "3 = sports" in t], texts


def test_names_are_drawn_in_a_real_cjk_font_when_one_is_installed(tmp_path, monkeypatch):
    if not _real_cjk_fonts():
        pytest.skip(NO_CJK_FONT)
    labels = axis_labels(NAMES)
    assert labels.names == NAMES and labels.note is None and labels.font is not None
    drawn, texts = _render(tmp_path, monkeypatch)
    assert list(drawn) == NAMES and not [t for t in texts if "labels.json" in t]
    _assert_drawn_as_themselves(drawn)


# ---- no usable font: class numbers, a key, one warning -----------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(fonts, "_warned", set())  # the warning comes once per process: a fresh process per test


@pytest.fixture
def no_cjk_font(monkeypatch):
    """The machine as if no installed font had Chinese glyphs: every real CJK font hidden, LastResortHE kept."""
    pytest.importorskip("matplotlib")
    from matplotlib import font_manager

    real = set(_real_cjk_fonts())
    monkeypatch.setattr(font_manager.fontManager, "ttflist",
                        [f for f in font_manager.fontManager.ttflist if f.fname not in real])


def test_without_a_cjk_font_the_picture_numbers_the_classes_with_a_key_and_warns_once(tmp_path, monkeypatch,
                                                                                     no_cjk_font, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        labels = axis_labels(NAMES)
        assert labels.names == ["0", "1", "2", "3"] and labels.font is None
        assert "labels.json" in labels.note and "3 = sports" in labels.note and "fonts-noto-cjk" in labels.note
        assert axis_labels(["sports", "news"]).names == ["sports", "news"]  # names the default font draws stay
        drawn, texts = _render(tmp_path, monkeypatch)
        _render(tmp_path, monkeypatch, name="again.png")  # a second picture (report.html's) says nothing more
    assert list(drawn) == ["0", "1", "2", "3"]
    key = [t for t in texts if "labels.json" in t]
    assert key and "3 = sports" in key[0] and not CJK.search(key[0]), texts  # the key itself draws no boxes
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "missing from font" in m], messages
    notes = [w for w in caught if issubclass(w.category, fonts.LabelFontWarning)]
    assert len(notes) == 1 and "fonts-noto-cjk" in str(notes[0].message), messages


def test_many_classes_are_numbered_by_their_class_id(tmp_path, monkeypatch, no_cjk_font):
    """Above 60 classes the picture is bars of the top confusions, a few classes of many: their numbers are their
    places in labels.json, not their places among the classes shown."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    names = [f"类别{i}" for i in range(100)]
    counts = np.eye(100, dtype=int) * 5
    counts[63, 7] = 4
    drawn = []
    save = Figure.savefig

    def savefig(figure, *args, **kwargs):
        save(figure, *args, **kwargs)
        drawn.extend(t.get_text() for axis in figure.axes for t in axis.get_yticklabels())

    monkeypatch.setattr(Figure, "savefig", savefig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fonts.LabelFontWarning)
        plot_confusion(tmp_path / "many.png", counts, names)
    assert drawn == ["63 -> 7"]


# ---- the font test itself, on fonts built to fool a character map -------------------------------------------------


def _build_font(path, family: str, glyph_of: dict[str, str], shapes: dict[str, list]) -> str:
    """A TrueType font ``family`` whose character ``c`` is glyph ``glyph_of[c]``, each glyph a list of rectangles."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    order = list(shapes)
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({ord(c): g for c, g in glyph_of.items()})
    glyphs = {}
    for name, rectangles in shapes.items():
        pen = TTGlyphPen(None)
        for x0, y0, x1, y1 in rectangles:
            pen.moveTo((x0, y0)), pen.lineTo((x0, y1)), pen.lineTo((x1, y1)), pen.lineTo((x1, y0)), pen.closePath()
        glyphs[name] = pen.glyph()
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (1000, 0) for name in order})
    builder.setupHorizontalHeader(ascent=880, descent=-120)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=880, usWinAscent=880, usWinDescent=120)
    builder.setupPost()
    builder.save(str(path))
    return str(path)


BOX = [(50, 0, 950, 800), (150, 100, 850, 700)]


def test_fonts_that_claim_characters_but_draw_boxes_are_refused(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    chars = {ord(c) for c in "体育"}
    last_resort = f"{matplotlib.get_data_path()}/fonts/ttf/LastResortHE-Regular.ttf"
    assert not fonts.draws(last_resort, chars)
    # A copy of the .notdef box under each character.
    copies = _build_font(tmp_path / "copies.ttf", "Copies", {"体": "a", "育": "b"},
                         {".notdef": BOX, "a": BOX, "b": BOX})
    # One symbol for the whole block (as Last Resort draws), under a name that does not say so.
    block = _build_font(tmp_path / "block.ttf", "Block", {chr(c): "cjk" for c in range(0x4E00, 0x9FA6)},
                        {".notdef": BOX, "cjk": [(100, 100, 900, 700)]})
    real = _build_font(tmp_path / "real.ttf", "Real", {"体": "a", "育": "b"},
                       {".notdef": BOX, "a": [(100, 0, 300, 800)], "b": [(100, 300, 900, 500)]})
    assert not fonts.draws(copies, chars) and not fonts.draws(block, chars)
    assert fonts.draws(real, chars) and not fonts.draws(real, chars | {ord("财")})
    assert _real_glyphs(real, "体育") and not _real_glyphs(copies, "体育") and not _real_glyphs(block, "体育")
    assert not _real_glyphs(last_resort, "体育")
