"""Label names in pictures: a font that really draws their glyphs, or class numbers with a key when none does.

matplotlib draws with DejaVu Sans, which has no Chinese, Japanese or Korean glyphs. Before a plot labels its axes,
:func:`axis_labels` looks for an installed font that draws every character of the names (the CJK fonts Linux, macOS
and Windows ship, then any other).

A font's character map is not proof that it draws a character: matplotlib bundles ``LastResortHE``, whose map claims
every code point and whose glyphs are boxes naming a Unicode block, one box for all of CJK. Picking it by its map drew
Chinese labels as boxes, with no note. So :func:`draws` accepts a font only when it is not a last-resort font by name
and each character's glyph has an outline that is neither the font's .notdef box nor the glyph of a neighbouring
letter (a font with one symbol per block gives both the same glyph).

When no installed font draws the names, the axes show class numbers (places in ``labels.json``, the order of
``report.txt``), the figure carries a key (with the names the default font can draw) and one
:class:`LabelFontWarning` per process says so, instead of one "Glyph ... missing" warning per character.
"""

from __future__ import annotations

import functools
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Fonts with Chinese glyphs, tried first: Noto/Source Han (Linux, `apt install fonts-noto-cjk`), WenQuanYi (Linux),
# PingFang/Heiti (macOS), Microsoft YaHei/SimHei (Windows), Arial Unicode (macOS, Office).
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "Droid Sans Fallback", "PingFang SC", "Heiti SC", "Microsoft YaHei", "SimHei",
                "Arial Unicode MS")

INSTALL_HINT = "install a font with their glyphs (e.g. apt-get install fonts-noto-cjk)"


class LabelFontWarning(UserWarning):
    """No installed font draws some label names: pictures number the classes instead (said once per process)."""


@dataclass
class AxisLabels:
    """What to write on a plot's class axes: ``names`` (the label names, or class numbers), the font to draw them
    in (None: matplotlib's default) and a ``note`` for the figure, the key to the numbers, when they are numbers."""

    names: list[str]
    font: object | None = None
    note: str | None = None


# The characters no font drew, for each set already warned about: a run draws confusion.png and report.html's
# picture from the same names, and one warning is enough.
_warned: set[frozenset[int]] = set()


def axis_labels(label_names: Sequence[str], ids: Iterable[int] | None = None) -> AxisLabels:
    """The label names with a font that draws them, or class numbers and a key when no installed font can.

    ``ids`` are the class numbers of ``label_names`` (their places in ``labels.json``) when the names are a few
    classes of many; by default 0, 1, 2, ...
    """
    ids = list(range(len(label_names))) if ids is None else list(ids)
    needed = frozenset(_visible("".join(label_names)))
    default = _default_font_path()
    if default is None or draws(default, needed):
        return AxisLabels(list(label_names))
    path = _drawing_font(needed, _candidates())
    if path is not None:
        from matplotlib.font_manager import FontProperties

        return AxisLabels(list(label_names), FontProperties(fname=path))
    known = [f"{i} = {name}" for i, name in zip(ids, label_names) if draws(default, _visible(name))]
    note = (f"classes by number: their places in labels.json, as in report.txt ({'; '.join(known)}): no installed "
            f"font draws the other names; {INSTALL_HINT}" if known else
            f"classes by number: their places in labels.json (0 = its first name), as in report.txt: no installed "
            f"font draws their names; {INSTALL_HINT}")
    missing = frozenset(c for c in needed if not draws(default, {c}))
    if missing not in _warned:
        _warned.add(missing)
        sample = "".join(chr(c) for c in sorted(missing)[:10]) + ("..." if len(missing) > 10 else "")
        warnings.warn(f"no installed font draws the label names' characters {sample}: pictures show the classes by "
                      f"number (their places in labels.json) with a key; {INSTALL_HINT}", LabelFontWarning,
                      stacklevel=2)
    return AxisLabels([str(i) for i in ids], None, note)


def draws(path: str, chars: Iterable[int]) -> bool:
    """Whether the font file at ``path`` draws every code point in ``chars`` as that character, not as a box.

    Its character map must have them; it must not be a last-resort font (named so: matplotlib's bundled
    ``LastResortHE``, Unicode's Last Resort); and each glyph must have an outline (spaces and format characters aside)
    that differs from the font's .notdef glyph and is not shared with a neighbouring letter, as the one symbol a
    last-resort font draws for a whole block is. matplotlib draws the first face of a collection: that face is read.
    """
    chars = set(chars)
    font = _font(path)
    if font is None or _is_last_resort(font.family_name) or _is_last_resort(font.postscript_name):
        return False
    return chars <= _charmap(path) and all(_real_glyph(path, c) for c in chars)


def _visible(text: str) -> set[int]:
    return {ord(c) for c in text if not c.isspace()}


def _is_last_resort(name: str | None) -> bool:
    return "lastresort" in "".join(str(name or "").lower().split()).replace("-", "").replace("_", "")


@functools.cache
def _font(path: str):
    """The font file opened once (its glyphs are read character by character)."""
    from matplotlib.ft2font import FT2Font

    try:
        return FT2Font(path)
    except (OSError, RuntimeError, ValueError):  # an unreadable or unsupported font file
        return None


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:  # a font of its own, not kept open: most installed fonts fail here and are never looked at again
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # an unreadable or unsupported font file
        return frozenset()


@functools.cache
def _real_glyph(path: str, char: int) -> bool:
    font = _font(path)
    index = font.get_char_index(char)
    if index == 0:
        return False
    outline = _outline(path, index)
    category = unicodedata.category(chr(char))
    if not outline[0] and category[0] not in "ZC":  # a blank (or bitmap-only) glyph for a visible character
        return False
    if outline == _outline(path, 0):  # the .notdef box under the character's code point
        return False
    if category[0] == "L":  # a block symbol: the letter next to it (e.g. 一 and 丁) has the very same glyph
        neighbours = (c for c in (char - 1, char + 1) if 0 <= c <= 0x10FFFF)
        if any(unicodedata.category(chr(c))[0] == "L" and font.get_char_index(c) == index for c in neighbours):
            return False
    return True


@functools.cache
def _outline(path: str, index: int) -> tuple[bytes, bytes]:
    """The glyph's outline in font units (vertices, path codes): equal outlines draw the same picture."""
    from matplotlib import ft2font

    font = _font(path)
    # LoadFlags from matplotlib 3.10; the module constant before it.
    no_scale = ft2font.LoadFlags.NO_SCALE if hasattr(ft2font, "LoadFlags") else ft2font.LOAD_NO_SCALE
    font.load_glyph(index, no_scale)
    vertices, codes = font.get_path()
    return vertices.tobytes(), codes.tobytes()


def _default_font_path() -> str | None:
    from matplotlib import font_manager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return str(font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True))
        except ValueError:
            return None


def _candidates() -> tuple[str, ...]:
    """The installed font files, the known CJK families first; last-resort fonts are never candidates."""
    from matplotlib import font_manager

    fonts = [f for f in font_manager.fontManager.ttflist if not _is_last_resort(f.name)]
    rank = {family: i for i, family in enumerate(CJK_FAMILIES)}
    fonts.sort(key=lambda f: rank.get(f.name, len(CJK_FAMILIES)))
    return tuple(dict.fromkeys(str(f.fname) for f in fonts))


@functools.lru_cache(maxsize=64)
def _drawing_font(needed: frozenset[int], candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` (font files) that draws every code point in ``needed``."""
    for path in candidates:
        if needed <= _charmap(path) and draws(path, needed):
            return path
    return None
