"""Label names in pictures: a font that has their glyphs, or class indices when the machine has none.

matplotlib draws with DejaVu Sans, which has no Chinese, Japanese or Korean glyphs: Chinese label names (the main
user language) came out as empty boxes, with a "Glyph ... missing from font(s)" warning per character. Before a
plot labels its axes, :func:`axis_labels` looks for an installed font that covers every character of the names
(the CJK fonts Linux, macOS and Windows ship, then any other); when there is none, the axes show class indices and
the figure says where the names are, and no warning is printed.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

# Fonts with Chinese glyphs, tried first: Noto/Source Han (Linux, `apt install fonts-noto-cjk`), WenQuanYi (Linux),
# PingFang/Heiti (macOS), Microsoft YaHei/SimHei (Windows), Arial Unicode (macOS, Office).
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "Droid Sans Fallback", "PingFang SC", "Heiti SC", "Microsoft YaHei", "SimHei",
                "Arial Unicode MS")


@dataclass
class AxisLabels:
    """What to write on a plot's class axes: ``names`` (the label names, or indices), the font to draw them in
    (None: matplotlib's default) and a ``note`` for the figure when the names could not be drawn."""

    names: list[str]
    font: object | None = None
    note: str | None = None


def axis_labels(label_names: list[str]) -> AxisLabels:
    """The label names with a font that draws them, or their indices and a note when no installed font can."""
    needed = {ord(c) for name in label_names for c in name if not c.isspace()}
    default = _default_font_path()
    if default is None or needed <= _charmap(default):
        return AxisLabels(list(label_names))
    path = _covering_font(frozenset(needed))
    if path is not None:
        from matplotlib.font_manager import FontProperties

        return AxisLabels(list(label_names), FontProperties(fname=path))
    return AxisLabels([str(i) for i in range(len(label_names))], None,
                      "classes by index (0 = the first name in labels.json): no installed font draws their names; "
                      "install one with Chinese glyphs, e.g. fonts-noto-cjk")


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):  # an unreadable or unsupported font file
        return frozenset()


def _default_font_path() -> str | None:
    from matplotlib import font_manager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)
        except ValueError:
            return None


@functools.lru_cache(maxsize=64)
def _covering_font(needed: frozenset[int]) -> str | None:
    """The path of an installed font with every codepoint in ``needed``: the known CJK families first."""
    from matplotlib import font_manager

    fonts = font_manager.fontManager.ttflist
    ranked = sorted(fonts, key=lambda f: (CJK_FAMILIES.index(f.name) if f.name in CJK_FAMILIES else len(CJK_FAMILIES)))
    for font in ranked:
        if needed <= _charmap(font.fname):
            return font.fname
    return None
