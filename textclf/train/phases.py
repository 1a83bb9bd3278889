"""Where a run's time went: wall-clock seconds per phase, written to ``timings.json`` in the run folder.

A :class:`PhaseClock` is always in one phase. ``with clock.phase("evaluate"):`` switches to a phase and, on leaving
it, back to the one it interrupted, so evaluation inside an epoch is not counted as the epoch's. Time in no named
phase is ``other``.

A command run from the shell (``textclf train``) starts its clock at the process's own start (from ``/proc`` on
Linux), so ``startup`` holds the interpreter, the imports and the argument parsing, the time a user waits before
anything of textclf's runs. The first run the command makes takes that clock (with the data reading the command
timed on it); a later run of the same command (the next seed of an ensemble, a fold, a tune trial) and a
:class:`~textclf.train.loop.TrainingLoop` made in a notebook start a clock of their own when they are made, with no
``startup``, so no run's ``timings.json`` counts another run's epochs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from pathlib import Path

TIMINGS_FILE = "timings.json"

_command_clock: contextvars.ContextVar[PhaseClock | None] = contextvars.ContextVar("textclf_command_clock",
                                                                                    default=None)


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc, to 10 ms), or None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, counted from the ")" that ends field 2
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - started, 0.0)


class PhaseClock:
    """Wall-clock seconds per named phase; see the module's docstring."""

    def __init__(self, since_process_start: bool = False):
        age = process_age() if since_process_start else None
        self.seconds: dict[str, float] = {"startup": age} if age is not None else {}
        self._started = time.perf_counter() - (age or 0.0)
        self._current, self._since = "other", time.perf_counter()
        self.taken = False  # by a run (clock_for_run): a command's clock times its first run only

    @contextlib.contextmanager
    def phase(self, name: str):
        """Count the time inside the block as ``name`` (added to earlier time of the same name)."""
        outer = self._switch(name)
        try:
            yield
        finally:
            self._switch(outer)

    def _switch(self, name: str) -> str:
        now = time.perf_counter()
        self.seconds[self._current] = self.seconds.get(self._current, 0.0) + now - self._since
        outer, self._current, self._since = self._current, name, now
        return outer

    def to_dict(self) -> dict:
        """``{"total_s": ..., "phases": {name: seconds}}``, in the order the phases first ran; ``total_s`` is the
        time since the clock's start (the process's, for a command) until now."""
        self._switch(self._current)  # bring the running phase up to date
        phases = {name: round(seconds, 3) for name, seconds in self.seconds.items() if seconds >= 0.0005}
        return {"total_s": round(time.perf_counter() - self._started, 3), "phases": phases}

    def write(self, folder: Path) -> None:
        from ..outputs import write_file_atomically

        write_file_atomically(Path(folder) / TIMINGS_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    def summary(self) -> str:
        """One line for a person: the total and the phases that took at least 5% of it, longest first."""
        timings = self.to_dict()
        total = timings["total_s"]
        large = sorted(((s, n) for n, s in timings["phases"].items() if s >= 0.05 * total), reverse=True)
        return f"{total:.1f} s (" + ", ".join(f"{name} {seconds:.1f}" for seconds, name in large) + ")"


@contextlib.contextmanager
def command_clock():
    """The clock of a command run from the shell, started at the process's start, for the loops the command makes."""
    token = _command_clock.set(PhaseClock(since_process_start=True))
    try:
        yield _command_clock.get()
    finally:
        _command_clock.reset(token)


def current_clock() -> PhaseClock:
    """The running command's clock (to time what the command does before its run), or a new one started now."""
    return _command_clock.get() or PhaseClock()


def clock_for_run() -> PhaseClock:
    """The clock of a run being made: the command's for its first run, else a new one started now."""
    clock = _command_clock.get()
    if clock is None or clock.taken:
        return PhaseClock()
    clock.taken = True
    return clock
