"""Every bad input of ``textclf train``: one readable message, exit status 2, no traceback, nothing written.

``CASES`` is the table: one line per case with the files to write, the flags, and a regex the message must match
(it names the file, the line or row, and what to do). Each case runs in-process through ``textclf.cli.main``; the
cases in ``AS_SUBPROCESS`` also run as real ``python -m textclf`` processes. After a failure the output folder
must not exist -- or, when it existed before, be exactly as it was. ``ACCEPTED`` lists the odd-but-usable inputs
that train with a warning (and a count) instead.

The data-level messages themselves are tested in more detail through the API in ``test_data.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_sentence_encoder

from textclf import cli

ROOT = Path(__file__).resolve().parents[1]


def rows(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


GOOD = rows("text,label", *[f"text number {i},{'pos' if i % 2 else 'neg'}" for i in range(20)])  # 2 balanced classes
PADDING = rows(*[f"padding row {i},{'pos' if i % 2 else 'neg'}" for i in range(300)])  # 6 KB more of GOOD rows


def case(name: str, files: dict, args: list[str], pattern: str, setup: str | None = None):
    """One table row. ``{tmp}``, ``{out}`` and ``{model}`` in ``args`` are filled in; without ``--data`` the
    data is ``{tmp}/a.csv`` (``GOOD`` unless ``files`` gives another one)."""
    return pytest.param(files, args, pattern, setup, id=name)


CASES = [
    # ---- files
    case("missing-file", {}, ["--data", "{tmp}/nope.csv"], r"nope\.csv: no such file or directory"),
    case("empty-file", {"a.csv": ""}, [], r"a\.csv: the file is empty; it needs a header line"),
    case("header-only", {"a.csv": "text,label\n"}, [], r"a\.csv: line 1 is a header but the file has no data rows"),
    case("unsupported-type", {"a.xlsx": "x"}, ["--data", "{tmp}/a.xlsx"], r"a\.xlsx: unsupported file type '\.xlsx'"),
    case("folder-without-data", {"d/notes.md": "x"}, ["--data", "{tmp}/d"], r"d: no training data found .*train\.csv"),
    case("class-folders-without-files", {"d/pos/read.md": "x", "d/neg/.keep": ""}, ["--data", "{tmp}/d"],
         r"d: no \.txt files found in its class folders \(neg, pos\)"),
    # ---- columns and format
    case("no-text-column", {"a.csv": rows("sentence,label", "x,y")}, [],
         r"a\.csv: line 1 \(header\) has no text column 'text'; its columns are \['sentence', 'label'\]"
         r".*--text-column"),
    case("no-label-column", {"a.csv": rows("text,category", "x,y")}, [],
         r"a\.csv: line 1 \(header\) has no label column 'label'; its columns are \['text', 'category'\]"
         r".*--label-column"),
    case("csv-unclosed-quote", {"a.csv": rows("text,label", "a,x", "b,y", '"c never closed,x', "d,y")}, [],
         r"a\.csv: line 4: a quoted field that opens on line 4 is never closed.*Close the quote"),
    case("not-utf8", {"a.csv": "text,label\na,x\n测试,y\n".encode("gbk")}, [],
         r"a\.csv: line 3 is not valid utf-8 .*--encoding gbk"),
    case("jsonl-not-json", {"a.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": \n'},
         ["--data", "{tmp}/a.jsonl"], r"a\.jsonl: line 2: not valid JSON .*one\s+JSON object"),
    case("bom-offset", {"a.csv": b"\xef\xbb\xbftext,label\nab\xffc,x\n"}, [],
         r"a\.csv: line 2 is not valid utf-8 \(byte b'\\xff' at offset 16\)"),
    case("zip-renamed-csv", {"a.csv": b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256))}, [],
         r"a\.csv: this is a binary file \(a zip archive; \.xlsx and \.docx files are zip archives too\), not text"),
    # a NUL byte is named by its line wherever it is: in the first 4 KiB it was "a binary file" with no line, and
    # after them it went into the texts unnoticed
    case("nul-byte-early", {"a.csv": GOOD.replace("text number 3,", "text num\x00ber 3,").encode()}, [],
         r"a\.csv: line 5 contains a NUL byte \(\\x00\).*remove the NUL bytes.*or export the data again"),
    case("nul-byte-late", {"a.csv": (GOOD + PADDING + "late\x00row,neg\n").encode()}, [],
         r"a\.csv: line 322 contains a NUL byte \(\\x00\).*remove the NUL bytes"),
    case("nul-bytes-many", {"a.csv": (GOOD.replace("number 1", "\x00").replace("number 2", "\x00")
                                      + PADDING).encode()}, [],
         r"a\.csv: line 3 contains a NUL byte \(\\x00\) \(12 in all, on line\(s\) 3, 4, 12, 13, 14, \.\.\.\)"),
    case("binary-without-signature", {"a.csv": bytes(range(256)) * 20}, [],
         r"a\.csv: this is a binary file, not text: line 1 holds the first of its NUL bytes"),
    case("json-object-not-jsonl", {"a.jsonl": '{\n  "text": "a",\n  "label": "x"\n}\n'}, ["--data", "{tmp}/a.jsonl"],
         r"a\.jsonl: the file holds one JSON object spread over several lines; expected one object per line"),
    case("symlink-loop", {}, ["--data", "{tmp}/d"],
         r"d: train\.csv is a symbolic link that points nowhere \(or, through other links, to itself\)",
         setup="symlink-loop"),
    case("named-pipe", {}, ["--data", "{tmp}/pipe.csv"], r"pipe\.csv: not a regular file \(a named pipe",
         setup="named-pipe"),
    # ---- rows and labels
    case("empty-text-strict", {"a.csv": GOOD + " ,pos\n"}, ["--strict"],
         r"a\.csv: 1 row\(s\) with an empty or whitespace-only text \(line 22\); remove those rows \(strict"),
    case("missing-label", {"a.csv": GOOD + "lonely,\n"}, [],
         r"a\.csv: 1 row\(s\) have no label in 'label' \(line 22\); fill in the label"),
    case("single-example-class", {"a.csv": GOOD + "lonely,odd\n"}, [],
         r"a\.csv: class\(es\) with a single example: 'odd' \(line 22\).*at least 2 per class"),
    case("unknown-dev-label", {"d/train.csv": GOOD, "d/dev.csv": rows("text,label", "q,pos", "r,maybe")},
         ["--data", "{tmp}/d"], r"dev\.csv: the dev split has label\(s\) .*'maybe'.*line 3"),
    case("unknown-test-label", {"t.csv": rows("text,label", "q,neutral", "r,pos")}, ["--test", "{tmp}/t.csv"],
         r"t\.csv: the test split has label\(s\) .*'neutral'.*line 2"),
    case("one-class", {"a.csv": rows("text,label", *[f"t{i},x" for i in range(10)])}, [],
         r"a\.csv: every training row has the label 'x'.*--label-column"),
    case("mixed-numeric-labels", {"a.csv": rows("text,label", "a,1", "b,pos", "c,0", "d,neg")}, [],
         r"a\.csv: labels mix integers \('0', '1'\) with names \('neg', 'pos'\)"),
    case("conflicting-duplicates-strict", {"a.csv": GOOD + "text number 1,neg\n"}, ["--strict"],
         r"a\.csv: 1 text\(s\) occur with different labels, e\.g\. line 3 and line 22"),
    # ---- model, settings, output folder, resources
    case("model-unreachable", {}, ["--model", "no-such-org/no-such-model"],
         r"'no-such-org/no-such-model' is neither a local folder nor reachable.*offline"),
    case("model-is-a-run-folder", {}, ["--model", str(Path(__file__).parent / "data" / "legacy" / "run")],
         r"legacy/run is a textclf training run folder, not a model folder; its best model is in .*legacy/run/best: "
         r"pass --model .*legacy/run/best"),
    # a damaged sentence-transformers pooling config was "no pooling information": the file and field are named
    case("pooling-config-not-json", {}, ["--model", "{tmp}/encoder", "--recipe", "few-shot"],
         r"encoder/1_Pooling/config\.json is damaged: it is not valid JSON \(.*line 1, column \d+\); restore the file",
         setup="damaged-pooling-json"),
    case("pooling-config-bad-field", {}, ["--model", "{tmp}/encoder", "--recipe", "few-shot"],
         r"encoder/1_Pooling/config\.json is damaged: field 'pooling_mode_mean_tokens' is 'yes', not true or false",
         setup="damaged-pooling-field"),
    case("pooling-config-missing", {}, ["--model", "{tmp}/encoder", "--recipe", "few-shot"],
         r"encoder/modules\.json names a Pooling module in 1_Pooling/, but .*1_Pooling/config\.json is missing",
         setup="missing-pooling-config"),
    # ---- numbers and config files (one validation layer: textclf.config)
    case("lr-inf", {}, ["--lr", "inf"], r"train\.lr: must be a finite number, got inf"),
    case("weight-decay-inf", {}, ["--weight-decay", "inf"], r"train\.weight_decay: must be a finite number, got inf"),
    case("epochs-inf", {}, ["--epochs", "inf"], r"train\.epochs: must be a finite number, got inf"),
    case("yaml-inf", {"c.yaml": "train:\n  lr: .inf\n"}, ["--config", "{tmp}/c.yaml"],
         r"train\.lr: must be a finite number, got inf"),
    case("config-yaml-list", {"c.yaml": "- 1\n- 2\n"}, ["--config", "{tmp}/c.yaml"],
         r"c\.yaml: expected a mapping of sections \(run:, data:, model:, train:\), got a list"),
    case("config-yaml-false", {"c.yaml": "false\n"}, ["--config", "{tmp}/c.yaml"],
         r"c\.yaml: expected a mapping of sections .*got a bool"),
    case("config-yaml-scalar", {"c.yaml": "3\n"}, ["--config", "{tmp}/c.yaml"],
         r"c\.yaml: expected a mapping of sections .*got a int"),
    case("config-json-array", {"c.json": "[1, 2]"}, ["--config", "{tmp}/c.json"],
         r"c\.json: expected a mapping of sections .*got a list"),
    case("config-section-list", {"c.yaml": "train: [1, 2]\n"}, ["--config", "{tmp}/c.yaml"],
         r"train: expected a mapping of fields, got list"),
    case("config-not-utf8", {"c.yaml": "train:\n  lr: 0.001 # 学习率\n".encode("gbk")}, ["--config", "{tmp}/c.yaml"],
         r"config file .*c\.yaml is not UTF-8 text \(byte \d+\); save it as UTF-8"),
    case("num-workers-huge", {}, ["--num-workers", "100000"],
         r"train\.num_workers: must be between 0 and 64, got 100000"),
    case("seed-too-large", {}, ["--seed", str(2**32)], r"train\.seed: must be between 0 and 2\*\*32 - 1"),
    case("duplicate-label-column", {"a.csv": GOOD.replace("text,label\n", "text,label,label\n").replace(
        "\n", ",x\n").replace("text,label,label,x\n", "text,label,label\n", 1)}, [],
         r"a\.csv: line 1 \(header\) names the label column 'label' more than once \(columns 2, 3\)"),
    case("max-length-over-model-limit", {}, ["--max-length", "512"],
         r"train\.max_length: 512 exceeds the model's limit of 128 tokens; use --max-length 128"),
    case("output-holds-another-run", {}, [],
         r"output folder .*out already holds a run; pass --overwrite.*--resume auto", setup="another-run"),
    case("output-not-a-run", {}, ["--overwrite"], r"out is not empty and holds no textclf run.*notes\.txt",
         setup="foreign-folder"),
    case("resume-not-a-checkpoint", {}, ["--resume", "{tmp}/nothing"], r"--resume .*nothing: not a checkpoint folder"),
    case("resume-damaged-checkpoint", {}, ["--resume", "auto"],
         r"checkpoint file .*step-000002/model\.safetensors is damaged or truncated.*delete .*step-000002 to resume "
         r"from the previous checkpoint", setup="damaged-checkpoint"),
    case("resume-changed-settings", {}, ["--resume", "auto", "--lr", "1e-3"],
         r"cannot resume from .*step-000002.*train\.lr: 0\.0001 -> 0\.001", setup="checkpoint"),
    case("out-of-memory", {}, [], r"out of GPU memory at optimizer step 1 .*--batch-size \(now 8\).*--grad-accum "
         r"\(now 1\).*--max-length \(now 16\)", setup="oom"),
]

# Odd but usable: training goes on with a warning that counts what happened.
ACCEPTED = [
    pytest.param({"a.csv": "\ufeff" + GOOD}, r"^$", id="utf8-bom"),
    pytest.param({"a.csv": GOOD + " ,pos\n\t,neg\n"},
                 r"warning: .*a\.csv: 2 row\(s\) with an empty or whitespace-only text \(line 22, line 23\); they "
                 r"were dropped", id="empty-texts-dropped"),
    pytest.param({"a.csv": GOOD + "text number 1,neg\n"},
                 r"warning: .*a\.csv: 1 text\(s\) occur with different labels.*all copies were kept",
                 id="conflicting-duplicates-kept"),
]

AS_SUBPROCESS = ["missing-file", "output-holds-another-run", "model-unreachable"]

BASE = ["train", "--output", "{out}", "--model", "{model}", "--device", "cpu", "--precision", "fp32",
        "--max-steps", "1", "--batch-size", "8", "--max-length", "16", "--quiet"]



@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, tiny_model_dir) -> Path:
    """An interrupted-looking run of GOOD: its checkpoint at step 2 (3 was the last step; 1 was rotated away)."""
    work = tmp_path_factory.mktemp("checkpointed")
    (work / "a.csv").write_text(GOOD, encoding="utf-8")
    args = fill(BASE, work, work / "out", tiny_model_dir) + ["--data", str(work / "a.csv"), "--max-steps", "3",
                                                              "--save-steps", "1"]
    assert cli.main(args) == 0
    return work / "out"


def fill(args: list[str], tmp: Path, out: Path, model: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)).replace("{out}", str(out)).replace("{model}", str(model)) for a in args]


def prepare(tmp: Path, files: dict, args: list[str], setup: str | None, model: Path, template: Path | None):
    """Write the case's files and output folder; return the full argument list."""
    files = {"a.csv": GOOD, **files}
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, newline="")
    out = tmp / "out"
    if setup == "another-run":
        (out / "best").mkdir(parents=True)
        (out / "config.yaml").write_text("train:\n  lr: 0.001\n")
        (out / "best" / "model.safetensors").write_bytes(b"weights of an earlier run")
        (out / ".textclf").write_text('{"kind": "run"}\n')  # the marker every run folder carries
    elif setup == "foreign-folder":
        out.mkdir()
        (out / "notes.txt").write_text("not a training run")
    elif setup == "symlink-loop":
        (tmp / "d").mkdir()
        (tmp / "d" / "train.csv").symlink_to("train.csv")  # points at itself
    elif setup == "named-pipe":
        os.mkfifo(tmp / "pipe.csv")  # opening it for reading would wait for a writer for ever
    elif setup in ("damaged-pooling-json", "damaged-pooling-field", "missing-pooling-config"):
        encoder = make_sentence_encoder(Path(shutil.copytree(model, tmp / "encoder")))
        config = encoder / "1_Pooling" / "config.json"
        if setup == "damaged-pooling-json":
            config.write_text(config.read_text()[:40])  # cut short, as by a full disk or an interrupted copy
        elif setup == "damaged-pooling-field":
            config.write_text(config.read_text().replace('"pooling_mode_mean_tokens": true',
                                                         '"pooling_mode_mean_tokens": "yes"'))
        else:
            config.unlink()
    elif setup in ("checkpoint", "damaged-checkpoint"):
        shutil.copytree(template, out)
        if setup == "damaged-checkpoint":
            weights = out / "checkpoints" / "step-000002" / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
    full = fill(BASE, tmp, out, model) + fill(args, tmp, out, model)
    if "--data" not in args:
        full += ["--data", str(tmp / "a.csv")]
    return full, out


def snapshot(folder: Path) -> dict | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def check_failure(code: int, err: str, pattern: str, out: Path, before: dict | None) -> None:
    assert code == 2, f"exit {code}:\n{err}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("textclf train: error: "), err
    assert re.search(pattern, errors[0]), f"{pattern!r} not in:\n{errors[0]}"
    assert snapshot(out) == before, "the output folder was created or changed"


@pytest.mark.parametrize("files, args, pattern, setup", CASES)
def test_bad_input_in_process(tmp_path, capsys, monkeypatch, tiny_model_dir, request, files, args, pattern, setup):
    template = request.getfixturevalue("checkpointed_run") if setup in ("checkpoint", "damaged-checkpoint") else None
    argv, out = prepare(tmp_path, files, args, setup, tiny_model_dir, template)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no minute of retries in a sandbox
    if setup == "oom":
        from textclf.train.trainer import Trainer

        def out_of_memory(self, batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total)")

        monkeypatch.setattr(Trainer, "training_step", out_of_memory)
    before = snapshot(out)
    code = cli.main(argv)
    check_failure(code, capsys.readouterr().err, pattern, out, before)


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory, tiny_model_dir) -> dict:
    """The AS_SUBPROCESS cases, started together (each pays Python's import time once, in parallel)."""
    by_id = {p.id: p.values for p in CASES}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    started = {}
    for name in AS_SUBPROCESS:
        files, args, pattern, setup = by_id[name]
        tmp = tmp_path_factory.mktemp(name)
        argv, out = prepare(tmp, files, args, setup, tiny_model_dir, None)
        proc = subprocess.Popen([sys.executable, "-m", "textclf", *argv], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started[name] = (proc, pattern, out, snapshot(out))
    results = {}
    for name, (proc, pattern, out, before) in started.items():
        _, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, err, pattern, out, before)
    return results


@pytest.mark.parametrize("name", AS_SUBPROCESS)
def test_bad_input_as_subprocess(subprocess_results, name):
    check_failure(*subprocess_results[name])


@pytest.mark.parametrize("files, warning", ACCEPTED)
def test_odd_but_usable_input_trains_with_a_warning(tmp_path, capsys, tiny_model_dir, files, warning):
    argv, out = prepare(tmp_path, files, [], None, tiny_model_dir, None)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = "\n".join(line for line in err.splitlines() if "warning:" in line)
    assert re.search(warning, warnings, re.S), f"{warning!r} not in:\n{err}"
    assert (out / "best").is_dir() and (out / "metrics.json").is_file()
