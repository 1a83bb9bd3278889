"""Where a run's time went (textclf.train.phases): the clock's arithmetic, and the process's age it starts from."""

from __future__ import annotations

import json

import pytest

from textclf.train import phases
from textclf.train.phases import PhaseClock, clock_for_run, command_clock, current_clock, process_age


@pytest.fixture()
def fake_time(monkeypatch):
    """perf_counter as a number the test moves by hand."""
    now = [100.0]
    monkeypatch.setattr(phases.time, "perf_counter", lambda: now[0])
    return now


def test_a_nested_phase_is_not_counted_in_the_phase_it_interrupts(fake_time):
    clock = PhaseClock()
    fake_time[0] += 1  # outside any phase: "other"
    with clock.phase("epoch 1"):
        fake_time[0] += 10
        with clock.phase("evaluate dev"):
            fake_time[0] += 2
        fake_time[0] += 5
    with clock.phase("epoch 2"):
        fake_time[0] += 7
        with clock.phase("evaluate dev"):
            fake_time[0] += 3
    timings = clock.to_dict()
    assert timings["phases"] == {"other": 1, "epoch 1": 15, "evaluate dev": 5, "epoch 2": 7}
    assert timings["total_s"] == 28 == sum(timings["phases"].values())


def test_a_phase_left_by_an_exception_still_counts(fake_time):
    clock = PhaseClock()
    with pytest.raises(ValueError), clock.phase("tokenize"):
        fake_time[0] += 3
        raise ValueError
    fake_time[0] += 1
    assert clock.to_dict()["phases"] == {"tokenize": 3, "other": 1}


def test_a_command_clock_starts_at_the_process_start(fake_time):
    age = process_age()
    assert age is not None and 0 < age < 24 * 3600  # this pytest process started a while ago
    with command_clock() as clock:
        assert current_clock() is clock
        fake_time[0] += 2
        timings = clock.to_dict()
    assert timings["phases"]["startup"] == pytest.approx(age, abs=1.0)
    assert timings["total_s"] == pytest.approx(age + 2, abs=1.0)
    assert current_clock() is not clock  # outside a command: a new clock each time, with no startup
    assert "startup" not in current_clock().to_dict()["phases"]


def test_the_summary_names_the_large_phases_longest_first(fake_time, tmp_path):
    clock = PhaseClock()
    for name, seconds in (("load model", 2.0), ("epoch 1", 20.0), ("save last", 0.1)):
        with clock.phase(name):
            fake_time[0] += seconds
    assert clock.summary() == "22.1 s (epoch 1 20.0, load model 2.0)"
    clock.write(tmp_path)
    assert json.loads((tmp_path / "timings.json").read_text())["phases"]["save last"] == 0.1


def test_a_command_times_its_first_run_with_its_clock_and_each_later_run_on_its_own(fake_time):
    """A seed ensemble, cross-validation or tune makes several runs in one command: none counts another's time."""
    with command_clock() as clock:
        with current_clock().phase("read data"):  # what the command does before its first run
            fake_time[0] += 1
        first = clock_for_run()
        with first.phase("epoch 1"):
            fake_time[0] += 10
        second = clock_for_run()
        with second.phase("epoch 1"):
            fake_time[0] += 7
    assert first is clock and second is not clock
    assert first.to_dict()["phases"]["read data"] == 1 and first.to_dict()["phases"]["epoch 1"] == 10
    assert second.to_dict()["phases"] == {"epoch 1": 7}
    assert clock_for_run() is not clock  # outside the command
