"""Property test of ``textclf train``: random flag values and config files, valid and not, of every type.

Whatever the values, the command exits 0 (it trained) or 2 (one readable error), never with a traceback, and it
never changes its input folder. Hypothesis draws the cases from a fixed seed (``derandomize``), so a failure in CI
reproduces locally.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from textclf import cli  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny"

NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 1e-4, 0.5, 0.999, 1.0, 2**31, 2**32, 2**64, math.inf, -math.inf, math.nan]),
    st.integers(-10, 10_000), st.floats(-10.0, 10.0, allow_nan=False),
)
TEXTS = st.sampled_from(["", "abc", "1e-3", "5e-5", "true", "no", "None", "null", "[1, 2]", "{}", "0x10", "\u00e9"])
VALUES = st.one_of(NUMBERS, TEXTS)
# Flags whose values are numbers; --num-workers stays out of the valid range's high end (each worker is a process).
FLAGS = ["--lr", "--epochs", "--batch-size", "--max-length", "--warmup-ratio", "--weight-decay", "--seed",
         "--grad-accum", "--label-smoothing", "--max-grad-norm", "--eval-steps", "--save-steps", "--log-steps",
         "--keep-checkpoints", "--eval-batch-size", "--patience", "--focal-gamma", "--layer-lr-decay", "--head-lr",
         "--dev-size", "--test-size", "--split-seed", "--max-tokens"]
WORKERS = st.sampled_from(["0", "-1", "100000", "x", "1.5"])
CONFIG_SECTIONS = st.sampled_from(["train", "data", "model", "run", "nonsense"])
CONFIG_VALUES = st.one_of(VALUES, st.lists(NUMBERS, max_size=2), st.just(None), st.booleans())
CONFIGS = st.one_of(
    st.none(),
    st.dictionaries(CONFIG_SECTIONS, st.one_of(
        st.dictionaries(st.sampled_from(["lr", "epochs", "batch_size", "seed", "dropout", "pooling", "encoding",
                                         "typo_field"]), CONFIG_VALUES, max_size=3),
        CONFIG_VALUES), max_size=2),
    st.lists(NUMBERS, max_size=2), NUMBERS, st.booleans(),
)


OUTCOMES: list[int] = []  # the exit codes seen, checked by the last test of this file


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
# The cases that once ended in a traceback or a silent success, always tried on top of the random ones.
@example(flags={"--lr": math.inf}, workers=None, config=None)
@example(flags={"--epochs": math.inf}, workers=None, config=None)
@example(flags={"--seed": 2**40}, workers="100000", config=None)
@example(flags={}, workers=None, config={"train": [1, 2]})
@example(flags={}, workers=None, config=False)
@example(flags={}, workers=None, config=[1, 2])
@example(flags={}, workers=None, config={"train": {"lr": math.inf}})
@example(flags={"--batch-size": 2}, workers=None, config={"train": {"epochs": 1}})
@given(flags=st.dictionaries(st.sampled_from(FLAGS), VALUES, max_size=3), workers=st.one_of(st.none(), WORKERS),
       config=CONFIGS)
def test_random_flags_and_configs_exit_0_or_2_and_never_touch_the_input(flags, workers, config, tmp_path_factory,
                                                                          tiny_model_dir, capsys):
    work = tmp_path_factory.mktemp("prop")
    data = work / "data"
    data.mkdir()
    for name in ("train.csv", "dev.csv", "test.csv"):
        (data / name).write_bytes((TINY / name).read_bytes())
    before = _snapshot(data)
    args = ["train", "--data", str(data), "--output", str(work / "out"), "--model", str(tiny_model_dir),
            "--device", "cpu", "--precision", "fp32", "--max-steps", "1", "--quiet"]
    for flag, value in flags.items():
        args += [flag, str(value)]
    if workers is not None:
        args += ["--num-workers", workers]
    if config is not None:
        (work / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        args += ["--config", str(work / "c.yaml")]
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse rejects a value with status 2
        code = exc.code
    err = capsys.readouterr().err
    OUTCOMES.append(code)
    assert code in (0, 2), f"exit {code} for {args}:\n{err}"
    assert "Traceback" not in err, err
    assert _snapshot(data) == before, "the input folder changed"


def test_the_property_test_trained_some_cases_and_refused_others():
    # A property test whose cases all fail validation would never reach training (or the other way round).
    assert 0 in OUTCOMES and 2 in OUTCOMES, OUTCOMES
