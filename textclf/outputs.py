"""Output folders: textclf replaces only folders it wrote, and never its own input.

Every output folder textclf creates (a training or pretraining run, an export) gets a marker file,
:data:`MARKER`. ``--overwrite`` (``overwrite=True``) may replace a folder only when

* it carries the marker (or, for folders written before markers existed, the file that signs its kind:
  ``config.yaml`` for a run, ``textclf.json`` for an export), and
* every entry in it belongs to textclf's layout for that kind of folder (``best/``, ``log.jsonl``, ...).

A folder that also holds anything else (the user's notes, code or data, next to a ``config.yaml`` of their
own) is refused with the foreign entries named, so a project folder given as ``--output`` by mistake is never
emptied. A folder without the marker is never replaced: a user's project holding a ``config.yaml``, ``data/`` and
``runs/`` looks like a run by its names alone.

Three more rules hold for every path textclf writes (docs/reliability.md):

* :func:`check_not_input`: an output (file or folder) is never, never contains and never lies inside one of the
  command's inputs (data, model folders, config files, the run's own reports), links resolved;
* :func:`scratch` names every temporary file or folder textclf makes, so crash leftovers are recognised by their
  name (``.textclf-tmp-...``) and a user's own ``*.tmp`` or ``*.partial`` is never taken for one;
* :func:`open_nofollow` opens the files textclf creates beside a user's (the run lock, the marker, temporary
  files) without following a symbolic link planted in their place.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputDirError

MARKER = ".textclf"
LOCK_FILE = ".textclf.lock"  # held by the process writing the folder (see locked())
# How long a run waits for the lock before giving up: a job killed a moment ago may still be exiting.
LOCK_WAIT_SECONDS = 10.0
# Every temporary name textclf makes starts with this (see scratch()); nothing else counts as a crash leftover.
SCRATCH_PREFIX = ".textclf-"
_LEFTOVERS = (SCRATCH_PREFIX + "*",)


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
    "confusion.png", "reliability.png", "errors.csv", "data", "report.html", "audit.csv", "audit.json", "teacher",
    "timings.json",
}), sign="config.yaml")
PRETRAIN_RUN = Layout("pretraining run", frozenset({
    "config.yaml", "log.jsonl", "checkpoints", "runs", "model", "mlm", "timings.json",
}), sign="config.yaml")
BASELINE = Layout("baseline", frozenset({"metrics.json", "report.txt", "report.html", "confusion.png", "baseline.pkl",
                                        "textclf.json", "labels.json", "tfidf.json", "tfidf.safetensors"}),
                  sign="tfidf.json")
LR_FIND = Layout("learning-rate range test", frozenset({"lr_find.png", "lr_find.json", "runs"}), sign="lr_find.json")
TUNE = Layout("search", frozenset({"tune.db", "tune.json", "trials", "best", "final"}), sign="tune.db",
              patterns=("tune.db-*",))  # SQLite's journal, left by a killed search
EXPORT = Layout("export", frozenset({
    "textclf.json", "labels.json", "parity.json", "normalizer.json", "synonyms.csv", "model.onnx", "model.int8.onnx",
    "README.md",
    "model.ts", "model.pt2", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json", "chat_template.jinja",
}), sign="textclf.json", patterns=("*.onnx", "*.onnx.data"))


def scratch(final: str | Path, kind: str = "tmp") -> Path:
    """The temporary path beside ``final`` that this process writes before renaming into place.

    ``kind`` says what it is for: ``tmp`` (being written), ``old`` (the previous version, moved aside), ``trash``
    (being deleted), ``partial`` (a staged export). The name carries the PID, so two processes never share one.
    """
    final = Path(final)
    return final.parent / f"{SCRATCH_PREFIX}{kind}-{final.name}-{os.getpid()}"


def scratch_glob(folder: str | Path, name: str = "*", kind: str = "*") -> list[Path]:
    """The scratch paths in ``folder`` for the final name ``name`` (all by default), of any process."""
    return sorted(Path(folder).glob(f"{SCRATCH_PREFIX}{kind}-{name}-*"))


def scratch_pid(path: Path) -> int | None:
    """The PID of the process that made the scratch path ``path`` (None when the name carries none)."""
    pid = Path(path).name.rsplit("-", 1)[-1]
    return int(pid) if pid.isdigit() else None


def open_nofollow(path: str | Path, flags: int = os.O_RDWR | os.O_CREAT, what: str = "file") -> int:
    """``os.open`` that never follows a symbolic link at ``path`` and never blocks on a FIFO; a clear
    :class:`OutputDirError` for a link, a folder or anything but a regular file, and for a path this user may not
    write. Returns the file descriptor.

    textclf creates its lock, marker and temporary files inside folders a user can write to as well; a link planted
    there (``.textclf.lock -> ~/.bashrc``) must never make a run truncate or overwrite the link's target.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():
            raise OutputDirError(f"{path} is a symbolic link; textclf never writes through a link it did not make. "
                                 f"Remove the link (rm {path}) and run again") from None
        if exc.errno == errno.EISDIR or path.is_dir():
            raise OutputDirError(f"{path} is a folder where textclf keeps its {what}; remove it (or choose "
                                 "another --output)") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputDirError(f"{path}: this user may not write textclf's {what} there ({exc.strerror}); fix "
                                 "the permissions or choose another --output") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputDirError(f"{path} is not a regular file (a device, FIFO or socket) where textclf keeps its "
                             f"{what}; remove it, or choose another --output")
    os.set_blocking(fd, True)
    return fd


def open_permissions(path: str | Path) -> None:
    """Give a file the permissions ``open()`` would have (0666 less the umask). safetensors writes its files 0600,
    so a model folder written by one user could not be read by the service account that deploys it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_file_atomically(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a fresh scratch file renamed over it: a reader never sees half a file, a
    crash leaves the previous version, and a link planted at either name is never followed (the rename replaces a
    link at ``path`` itself, not its target)."""
    path = Path(path)
    tmp = scratch(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # this process's own leftover from an earlier attempt (the name carries our PID)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, what="temporary file")
    try:
        with contextlib.suppress(OSError):  # a file the user made private stays private
            os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename makes it the file: a crash leaves old or new
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def claim(folder: Path, layout: Layout) -> Path:
    """Create ``folder`` (and parents) and mark it as textclf's, so a later ``--overwrite`` may replace it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    if not is_marked(folder):
        if marker.is_symlink() or marker.is_dir():
            open_nofollow(marker, os.O_WRONLY, what="marker")  # raises, naming the link or folder
        write_file_atomically(marker, json.dumps({"kind": layout.kind}) + "\n")
    return folder


def is_marked(folder: Path) -> bool:
    """Whether ``folder`` carries the marker textclf writes: a regular file (a link named like one proves nothing)."""
    marker = Path(folder) / MARKER
    return marker.is_file() and not marker.is_symlink()


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
    if not is_marked(folder):
        held = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
        legacy = (f" If it is a {layout.kind} written before textclf marked its folders, delete it yourself"
                  if (folder / layout.sign).is_file() else "")
        raise OutputDirError(f"output folder {folder} is not empty and holds no textclf {layout.kind} (no {MARKER} "
                             f"marker, which textclf writes into every folder it creates; it holds {_some(held)}): "
                             f"textclf replaces only folders it wrote. Choose a new or empty folder with --output."
                             + legacy)
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
    if Path(folder).is_dir():
        clear(folder, keep={LOCK_FILE})


def clear(folder: Path, keep: tuple[str, ...] | set[str] = ()) -> None:
    """Remove every entry of ``folder`` but those named in ``keep`` (links themselves, never what they point to).

    Only for a folder :func:`check_replaceable` passed (:func:`replace`) or one this process made for itself (a
    staging folder)."""
    for entry in Path(folder).iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_not_input(output: str | Path, inputs: dict[str, object], flag: str = "--output") -> None:
    """Refuse an output path that is, contains or lies inside one of the command's ``inputs``.

    ``inputs`` maps a flag (``"--data"``) to a path, a list of paths, or None; paths that do not exist are skipped
    (a hub model name). Links are resolved and hard links compared by inode, so no second name for an input gets
    past. Outputs inside an input folder are refused as well: a run written inside a folder-per-class data set
    would become a class of the next training, and a report written into a model folder changes that model.
    """
    out = _real(output)
    for source_flag, value in inputs.items():
        for path in _paths(value):
            if not (path.exists() or path.is_symlink()):
                continue
            source = _real(path)
            if out == source or _same_file(output, path):
                how = "is"
            elif out in source.parents:
                how = "contains"
            elif source in out.parents and source.is_dir():
                how = "lies inside"
            else:
                continue
            kind = "folder" if source.is_dir() else "file"
            raise OutputDirError(f"{flag} {output} {how} the {source_flag} {kind} {path}: writing there would "
                                 f"change the command's own input; choose an {flag} outside every input")


def _paths(value) -> list[Path]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    return [Path(v) for v in value if v is not None and v != ""]


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
    handle = os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT, what="run lock"), "r+", encoding="utf-8")
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_inode(handle, path):
                    break
                # The holder we waited for removed the lock file on exit, and a newcomer may already hold a fresh
                # one at the same name: a lock on the removed file guards nothing. Open the current file again.
                handle.close()
                handle = os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT, what="run lock"), "r+",
                                   encoding="utf-8")
                continue
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


def _same_inode(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.lstat(path).st_ino
    except FileNotFoundError:
        return False


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
