"""Output folders: textclf replaces only folders it wrote, and never its own input.

Every output folder textclf creates (a training or pretraining run, an export) gets a marker file,
:data:`MARKER`. ``--overwrite`` (``overwrite=True``) may replace a folder only when

* it carries the marker (or, for folders written before markers existed, the file that signs its kind:
  ``config.yaml`` for a run, ``textclf.json`` for an export), and
* every entry in it belongs to textclf's layout for that kind of folder (``best/``, ``log.jsonl``, ...).

A folder that also holds anything else (the user's notes, code or data, next to a ``config.yaml`` of their
own) is refused with the foreign entries named, so a project folder given as ``--output`` by mistake is never
emptied. :func:`check_not_input` refuses an output folder that is, or contains, a folder the command reads.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputDirError

MARKER = ".textclf"
# Left behind by a crash mid-write (checkpoint.write_atomically, atomic file writes, staged exports).
_LEFTOVERS = (".tmp-*", ".old-*", ".trash-*", "*.tmp", ".*.partial-*", "*.partial")


@dataclass(frozen=True)
class Layout:
    """What textclf writes at the top of one kind of output folder."""

    kind: str
    names: frozenset[str]
    sign: str  # the file that marks a folder of this kind written before the marker existed
    patterns: tuple[str, ...] = ()

    def foreign(self, folder: Path) -> list[str]:
        """Entries of ``folder`` that are not textclf's (sorted)."""
        patterns = self.patterns + _LEFTOVERS
        return sorted(entry.name for entry in folder.iterdir()
                      if entry.name != MARKER and entry.name not in self.names
                      and not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns))


RUN = Layout("run", frozenset({
    "config.yaml", "log.jsonl", "checkpoints", "best", "last", "runs", "metrics.json", "report.txt",
    "confusion.png", "reliability.png", "errors.csv",
}), sign="config.yaml")
PRETRAIN_RUN = Layout("pretraining run", frozenset({
    "config.yaml", "log.jsonl", "checkpoints", "runs", "model", "mlm",
}), sign="config.yaml")
EXPORT = Layout("export", frozenset({
    "textclf.json", "labels.json", "parity.json", "normalizer.json", "synonyms.csv", "model.onnx", "model.int8.onnx",
    "model.ts", "model.pt2", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json", "chat_template.jinja",
}), sign="textclf.json", patterns=("*.onnx", "*.onnx.data"))


def claim(folder: Path, layout: Layout) -> Path:
    """Create ``folder`` (and parents) and mark it as textclf's, so a later ``--overwrite`` may replace it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"kind": layout.kind}) + "\n", encoding="utf-8")
    return folder


def check_replaceable(folder: Path, layout: Layout) -> None:
    """Raise :class:`OutputDirError` unless ``folder`` is missing, empty, or a textclf folder of ``layout`` alone.

    Runs before any work starts, so a refused command leaves everything as it was.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise OutputDirError(f"{folder} exists and is not a folder; choose another --output")
    if not any(folder.iterdir()):
        return
    foreign = layout.foreign(folder)
    if not (folder / MARKER).is_file() and not (folder / layout.sign).is_file():
        held = sorted(p.name for p in folder.iterdir())
        raise OutputDirError(f"output folder {folder} is not empty and holds no textclf {layout.kind} (no "
                             f"{layout.sign}; it holds {_some(held)}); choose a new or empty folder with --output")
    if foreign:
        raise OutputDirError(
            f"output folder {folder} holds files textclf did not write next to its {layout.kind}: {_some(foreign)}; "
            f"--overwrite only replaces a folder that holds textclf's files and nothing else. Move those files "
            f"away, or choose a new or empty folder with --output")


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def replace(folder: Path, layout: Layout) -> None:
    """Delete ``folder`` after :func:`check_replaceable`; the one place textclf removes an output folder."""
    check_replaceable(folder, layout)
    if Path(folder).is_dir():
        shutil.rmtree(folder)


def check_not_input(output: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is one of ``inputs`` (``{"--model": path}``) or a folder containing one."""
    out = Path(output).resolve()
    for flag, path in inputs.items():
        source = Path(path).resolve()
        if out == source or out in source.parents:
            raise OutputDirError(
                f"--output {output} {'is' if out == source else 'contains'} the {flag} folder {path}: writing there "
                f"would replace the command's own input; choose another --output")
