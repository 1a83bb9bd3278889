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

import contextlib
import fnmatch
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputDirError

MARKER = ".textclf"
LOCK_FILE = ".textclf.lock"  # held by the process writing the folder (see locked())
# How long a run waits for the lock before giving up: a job killed a moment ago may still be exiting.
LOCK_WAIT_SECONDS = 10.0
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
                      if entry.name not in (MARKER, LOCK_FILE) and entry.name not in self.names
                      and not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns))


RUN = Layout("run", frozenset({
    "config.yaml", "log.jsonl", "checkpoints", "best", "last", "runs", "metrics.json", "report.txt",
    "confusion.png", "reliability.png", "errors.csv", "data", "report.html", "audit.csv", "audit.json",
}), sign="config.yaml")
PRETRAIN_RUN = Layout("pretraining run", frozenset({
    "config.yaml", "log.jsonl", "checkpoints", "runs", "model", "mlm",
}), sign="config.yaml")
LR_FIND = Layout("learning-rate range test", frozenset({"lr_find.png", "lr_find.json", "runs"}), sign="lr_find.json")
TUNE = Layout("search", frozenset({"tune.db", "tune.json", "trials", "best", "final"}), sign="tune.db",
              patterns=("tune.db-*",))  # SQLite's journal, left by a killed search
EXPORT = Layout("export", frozenset({
    "textclf.json", "labels.json", "parity.json", "normalizer.json", "synonyms.csv", "model.onnx", "model.int8.onnx",
    "README.md",
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
    if not has_content(folder):
        return
    foreign = layout.foreign(folder)
    if not (folder / MARKER).is_file() and not (folder / layout.sign).is_file():
        held = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
        raise OutputDirError(f"output folder {folder} is not empty and holds no textclf {layout.kind} (no "
                             f"{layout.sign}; it holds {_some(held)}); choose a new or empty folder with --output")
    if foreign:
        raise OutputDirError(
            f"output folder {folder} holds files textclf did not write next to its {layout.kind}: {_some(foreign)}; "
            f"--overwrite only replaces a folder that holds textclf's files and nothing else. Move those files "
            f"away, or choose a new or empty folder with --output")


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def has_content(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides a run lock."""
    return Path(folder).is_dir() and any(p.name != LOCK_FILE for p in Path(folder).iterdir())


def replace(folder: Path, layout: Layout) -> None:
    """Empty ``folder`` after :func:`check_replaceable`; the one place textclf removes an output folder's contents.

    The run lock stays: the process replacing the folder holds it.
    """
    check_replaceable(folder, layout)
    if not Path(folder).is_dir():
        return
    for entry in Path(folder).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_not_input(output: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is one of ``inputs`` (``{"--model": path}``) or a folder containing one."""
    out = Path(output).resolve()
    for flag, path in inputs.items():
        source = Path(path).resolve()
        if out == source or out in source.parents:
            raise OutputDirError(
                f"--output {output} {'is' if out == source else 'contains'} the {flag} folder {path}: writing there "
                f"would replace the command's own input; choose another --output")


@contextlib.contextmanager
def locked(folder: Path):
    """Hold ``folder``'s run lock while the block runs; a second process gets :class:`OutputDirError` at once.

    Two jobs writing one run folder (a restarted job whose first copy still runs, two ``--resume auto``) would
    interleave their logs and overwrite each other's checkpoints. The lock is an ``flock`` on :data:`LOCK_FILE`
    inside the folder (created for the purpose, and removed again if the run leaves it empty); the kernel releases
    it when the holder exits, even on SIGKILL, so a crash never leaves a stale lock. Where ``fcntl`` does not exist
    (Windows) runs are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"{folder} exists and is not a folder; choose another --output")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under a file, or in a folder this user may not write
        raise OutputDirError(f"output folder {folder} cannot be created ({exc.strerror or exc}); choose another "
                             "--output") from None
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:  # a killed holder may still be exiting (a scheduler's restart)
                    time.sleep(0.1)
                    continue
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise OutputDirError(f"output folder {folder} is in use by another textclf process (PID {holder}); "
                                     "wait for it to finish or stop it, or choose another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # the run wrote nothing: leave no empty folder behind
    finally:
        handle.close()


def check_output_file(path: str | Path, flag: str = "--output") -> Path:
    """Refuse, before any work, an output file path that is a folder or whose folder is missing or read-only."""
    path = Path(path)
    if path.is_dir():
        raise OutputDirError(f"{flag} {path} is a folder; give a file name inside it, e.g. {path / 'out.jsonl'}")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise OutputDirError(f"{flag} {path}: {parent} {what}; create the folder or choose another path")
    if not os.access(parent, os.W_OK):
        raise OutputDirError(f"{flag} {path}: the folder {parent} is not writable by this user; choose another path")
    return path


def check_output_folder(path: str | Path, flag: str = "--output") -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be created here."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {path} is a file, not a folder; choose another {flag}")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise OutputDirError(f"{flag} {path}: {existing} is a file, so no folder can be made under it; choose "
                             f"another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{flag} {path}: {existing} is not writable by this user; choose another {flag}")
    return path
