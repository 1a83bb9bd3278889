"""Export: ONNX (fp32, int8), TorchScript and torch.export folders that load in Predictor and match PyTorch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_predict import TEXTS, build_tiny_classifier

from textclf.cli import main
from textclf.deploy import export as export_module
from textclf.deploy.export import ExportError, export_model
from textclf.deploy.predict import Predictor
from textclf.errors import ConfigError, ModelLoadError, OutputDirError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Texts the parity check never saw, with other lengths and batch sizes.
NEW_TEXTS = ["Which planet is closest to the sun?", "好", "a " * 40, "国足客场2比1战胜对手", "Why?", "x y z"]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    import textclf

    names = textclf.load_dataset(tiny_data_dir).label_map.names
    return build_tiny_classifier(tiny_model_dir, tmp_path_factory.mktemp("clf"), names)


@pytest.fixture(scope="module")
def reference(bundle):
    return Predictor.from_pretrained(bundle, backend="torch", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def onnx_export(bundle, tiny_data_dir, tmp_path_factory):
    return export_model(bundle, tmp_path_factory.mktemp("export") / "onnx", data=tiny_data_dir / "test.csv", log=quiet)


def test_onnx_export_folder_is_self_contained_and_passes_parity(onnx_export, reference, tmp_path):
    folder = onnx_export.folder
    files = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "tokenizer.json", "labels.json", "textclf.json", "parity.json"} <= files
    assert "model.safetensors" not in files
    meta = json.loads((folder / "textclf.json").read_text())
    assert meta["export"]["format"] == "onnx" and meta["max_length"] == 32 and meta["backend"] == "onnx"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["label_agreement"] == 1.0 and parity["max_abs_logit_diff"] < 1e-4
    assert parity["num_texts"] == 50 and parity["accuracy"]["change"] == 0.0
    # Copied elsewhere, with the training bundle out of reach, it still loads and predicts.
    moved = shutil.copytree(folder, tmp_path / "moved")
    predictor = Predictor.from_pretrained(moved, backend="onnx")
    assert predictor.backend.name == "onnx" and predictor.label_map == reference.label_map
    assert [p.label for p in predictor.predict(TEXTS)] == [p.label for p in reference.predict(TEXTS)]


def test_onnx_graph_has_dynamic_axes_token_type_ids_and_current_opset(onnx_export):
    import onnx

    graph = onnx.load(str(onnx_export.model_file))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(isinstance(dim, str) for dims in inputs.values() for dim in dims)  # symbolic batch and sequence
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 18


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_onnx_predictor_matches_pytorch_on_new_texts(onnx_export, reference, batch_size):
    predictor = Predictor.from_pretrained(onnx_export.folder)  # backend="auto" picks ONNX
    np.testing.assert_allclose(predictor.logits(NEW_TEXTS, batch_size), reference.logits(NEW_TEXTS), atol=1e-4)
    assert [p.truncated for p in predictor.predict(NEW_TEXTS)] == [p.truncated for p in reference.predict(NEW_TEXTS)]


def test_int8_export_through_the_cli(bundle, tiny_data_dir, onnx_export, reference, tmp_path, capsys):
    out = tmp_path / "int8"
    # A random 32-wide model has small margins between its 10 labels, so int8 flips a few of its guesses; the
    # defaults (95% agreement, 1 point of accuracy) are for trained models, see bench/deploy_bench.py.
    code = main(["export", "--model", str(bundle), "--format", "onnx", "--quantize", "int8", "--output", str(out),
                 "--data", str(tiny_data_dir / "test.csv"), "--min-agreement", "0.8", "--max-accuracy-drop", "0.1"])
    printed = capsys.readouterr().out
    assert code == 0 and "parity (onnx int8 vs PyTorch fp32, 50 texts" in printed and "parity check: passed" in printed
    assert {p.name for p in out.iterdir()} >= {"model.int8.onnx", "parity.json"} and not (out / "model.onnx").exists()
    assert onnx_export.size_bytes / (out / "model.int8.onnx").stat().st_size > 3
    parity = json.loads((out / "parity.json").read_text())
    assert parity["quantize"] == "int8" and parity["min_agreement"] == 0.8 and parity["atol"] is None
    assert parity["label_agreement"] >= 0.8 and parity["max_abs_logit_diff"] > 0
    assert abs(parity["accuracy"]["change"]) <= 0.1 and parity["accuracy"]["num_texts"] == 50
    predictor = Predictor.from_pretrained(out, backend="onnx")
    agree = np.mean([a.label == b.label for a, b in zip(predictor.predict(TEXTS), reference.predict(TEXTS))])
    assert agree >= 0.8


def test_torchscript_export_loads_in_the_torch_backend(bundle, reference, tmp_path):
    result = export_model(bundle, tmp_path / "ts", format="torchscript", log=quiet)
    assert result.model_file.name == "model.pt" and result.parity.passed
    predictor = Predictor.from_pretrained(result.folder, device="cpu", precision="fp32")
    assert predictor.backend.name == "torch" and isinstance(predictor.model, torch.jit.ScriptModule)
    np.testing.assert_allclose(predictor.logits(NEW_TEXTS, 2), reference.logits(NEW_TEXTS), atol=1e-4)
    with pytest.raises(ModelLoadError, match="torchscript export"):
        Predictor.from_pretrained(result.folder, backend="onnx")


def test_torchscript_falls_back_to_torch_export_without_torch_jit(bundle, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "_torchscript_available", lambda: False)
    messages = []
    result = export_model(bundle, tmp_path / "pt2", format="torchscript", log=messages.append)
    assert result.model_file.name == "model.pt2" and any("torch.export" in m for m in messages)
    predictor = Predictor.from_pretrained(result.folder, device="cpu", precision="fp32")
    np.testing.assert_allclose(predictor.logits(NEW_TEXTS, 2), reference.logits(NEW_TEXTS), atol=1e-4)


class _Skewed(torch.nn.Module):
    """An exporter bug in miniature: the exported graph adds a bias the PyTorch model does not have."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        logits = self.inner(input_ids, attention_mask)
        return logits + torch.linspace(0, 3, logits.shape[1])


def test_a_disagreeing_export_fails_and_leaves_nothing_loadable(bundle, tmp_path, monkeypatch, capsys):
    # Exported without token_type_ids (as for encoders that do not take them), through a skewing wrapper.
    real_wrap = export_module._wrap
    monkeypatch.setattr(export_module, "_input_names", lambda model: ["input_ids", "attention_mask"])
    monkeypatch.setattr(export_module, "_wrap", lambda model, inputs: _Skewed(real_wrap(model, inputs)).eval())
    out = tmp_path / "bad"
    code = main(["export", "--model", str(bundle), "--format", "onnx", "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    # The report is textclf's, in a folder marked as textclf's: the next export into it may replace it.
    assert sorted(p.name for p in out.iterdir()) == [".textclf", "parity.json"]
    report = json.loads((out / "parity.json").read_text())
    assert not report["passed"] and report["sample_source"].startswith("the built-in sample")
    # Off by exactly the skew: the two-input graph ran through the ONNX backend and is otherwise right.
    assert report["max_abs_logit_diff"] == pytest.approx(3.0, abs=1e-3)
    # The message names the flag, its value, the measured value (rounded up) and a value that accepts it.
    match = re.search(r"max \|logit diff\| ([\d.]+) is above --atol 0\.001: pass --atol ([\d.]+) to accept it", err)
    assert match, err
    assert float(match[2]) >= float(match[1]) >= report["max_abs_logit_diff"]
    assert "--quantize" not in err  # an fp32 export has no quantization to leave out
    with pytest.raises(ModelLoadError):
        Predictor.from_pretrained(out)
    assert not list(tmp_path.glob(".textclf-partial-bad-*"))  # no staging folder left behind


def test_a_failed_export_leaves_the_previous_export_untouched(bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    export_model(bundle, out, format="onnx", log=quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_wrap = export_module._wrap
    monkeypatch.setattr(export_module, "_input_names", lambda model: ["input_ids", "attention_mask"])
    monkeypatch.setattr(export_module, "_wrap", lambda model, inputs: _Skewed(real_wrap(model, inputs)).eval())
    code = main(["export", "--model", str(bundle), "--format", "onnx", "--output", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and f"the previous contents of {out} are untouched" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not json.loads((tmp_path / "export.parity-failed.json").read_text())["passed"]
    Predictor.from_pretrained(out)  # still loads


def _failed_int8_export(bundle, tiny_data_dir, out, capsys, *flags) -> tuple[str, dict]:
    """Run an int8 export that fails its parity check; returns the error message and the report."""
    code = main(["export", "--model", str(bundle), "--format", "onnx", "--quantize", "int8", "--output", str(out),
                 "--data", str(tiny_data_dir / "test.csv"), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    return err, json.loads((out / "parity.json").read_text())


def test_a_failed_int8_check_names_its_flags_and_a_looser_rerun_reuses_the_folder(bundle, tiny_data_dir, tmp_path,
                                                                                  capsys):
    # int8 flips a few of the tiny model's guesses (see test_int8_export_through_the_cli): 100% agreement fails.
    out = tmp_path / "int8"
    err, report = _failed_int8_export(bundle, tiny_data_dir, out, capsys, "--min-agreement", "1.0")
    match = re.search(r"label agreement ([\d.]+) is below --min-agreement 1: pass --min-agreement ([\d.]+) to "
                      r"accept it", err)
    assert match, err
    # Measured and suggested values are rounded down, so neither seems to pass and the suggestion does pass.
    assert float(match[2]) <= float(match[1]) <= report["label_agreement"] < 1
    assert f"or export without --quantize. Nothing was exported; the report is in {out / 'parity.json'}" in err
    accept = dict(re.findall(r"pass (--[a-z-]+) ([\d.]+) to accept it", err))
    if report["accuracy"]["change"] < -0.01:  # the accuracy check names its flag the same way
        assert "more than --max-accuracy-drop 0.01: pass --max-accuracy-drop" in err
        assert float(accept["--max-accuracy-drop"]) >= -report["accuracy"]["change"]
    assert sorted(p.name for p in out.iterdir()) == [".textclf", "parity.json"]
    # Failing again (here with --overwrite) replaces the folder's own report instead of writing one beside it.
    err, report = _failed_int8_export(bundle, tiny_data_dir, out, capsys, "--min-agreement", "0.999", "--overwrite")
    assert report["min_agreement"] == 0.999 and not (tmp_path / "int8.parity-failed.json").exists()
    assert sorted(p.name for p in out.iterdir()) == [".textclf", "parity.json"]
    # The same export with the suggested thresholds, into the same folder and without --overwrite: the failure
    # report was all it held, so it counts as empty.
    flags = [word for flag, value in accept.items() for word in (flag, value)]
    code = main(["export", "--model", str(bundle), "--format", "onnx", "--quantize", "int8", "--output", str(out),
                 "--data", str(tiny_data_dir / "test.csv"), *flags])
    captured = capsys.readouterr()
    assert code == 0 and "parity check: passed" in captured.out, captured.err
    assert json.loads((out / "parity.json").read_text())["passed"]
    assert Predictor.from_pretrained(out, backend="onnx").backend.name == "onnx"


def test_an_unmarked_failure_report_is_never_replaced(bundle, tmp_path, capsys):
    # Written by a release that did not mark the folder: textclf cannot tell it from a user's parity.json.
    out = tmp_path / "old"
    out.mkdir()
    (out / "parity.json").write_text(json.dumps({"passed": False, "failures": ["label agreement 0.9 ..."]}))
    for overwrite in ([], ["--overwrite"]):
        assert main(["export", "--model", str(bundle), "--format", "onnx", "--output", str(out), *overwrite]) == 2
        err = capsys.readouterr().err
        assert "holds only parity.json, the report of an export that failed its parity check" in err
        assert f"rm {out / 'parity.json'}" in err and [p.name for p in out.iterdir()] == ["parity.json"]


def test_a_failure_report_never_marks_a_folder_the_user_filled_meanwhile(bundle, tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    real_check = export_module.check_parity

    def failing_check(*args, **kwargs):
        (out / "notes.txt").write_text("mine")  # the user saves a file into the empty folder while the export runs
        report = real_check(*args, **kwargs)
        report.passed, report.failures = False, ["forced"]
        return report

    monkeypatch.setattr(export_module, "check_parity", failing_check)
    with pytest.raises(ExportError, match=rf"Details: {re.escape(str(tmp_path / 'mine.parity-failed.json'))}"):
        export_model(bundle, out, format="torchscript", log=quiet)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # no marker, no report: still only the user's folder


@pytest.mark.parametrize(("value", "places", "up", "significant", "expected"), [
    (0.94999, 4, False, False, "0.9499"), (0.9482758620689655, 2, False, False, "0.94"), (1.0, 2, False, False, "1"),
    (0.019999999999999997, 2, True, False, "0.02"), (0.0201, 2, True, False, "0.03"),
    (3.0000002, 2, True, True, "3.1"), (2.9999998, 3, True, True, "3"), (0.000123456, 2, True, True, "0.00013")])
def test_failure_values_are_rounded_away_from_the_threshold(value, places, up, significant, expected):
    assert export_module._rounded(value, places, up, significant) == expected


@pytest.mark.parametrize("where", ["the model folder", "a folder holding it"])
def test_export_never_replaces_its_own_input(bundle, tmp_path, where, capsys):
    run = tmp_path / "run"
    shutil.copytree(bundle, run / "best")
    (run / "metrics.json").write_text("{}")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    output = run / "best" if where == "the model folder" else run
    code = main(["export", "--model", str(run / "best"), "--format", "onnx", "--output", str(output), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "would change the command's own input" in err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_export_overwrite_replaces_only_an_export(bundle, tmp_path):
    from textclf import outputs

    out = tmp_path / "export"
    export_model(bundle, out, format="onnx", log=quiet)
    assert outputs.EXPORT.foreign(out) == [] and (out / outputs.MARKER).is_file()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"notes\.txt"):
        export_model(bundle, out, format="onnx", overwrite=True, log=quiet)
    (out / "notes.txt").unlink()
    export_model(bundle, out, format="onnx", overwrite=True, log=quiet)


def test_an_opset_the_exporter_cannot_write_is_refused_not_ignored(bundle, tmp_path):
    with pytest.raises(ExportError, match=r"--opset 3: the installed exporter cannot write that opset \(it wrote "
                                          r"opset \d+\); use --opset \d+ or leave --opset out"):
        export_model(bundle, tmp_path / "old", format="onnx", opset=3, log=quiet)
    assert not (tmp_path / "old").exists() and not list(tmp_path.glob(".textclf-partial-old-*"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_samples": 0}, "num_samples must be >= 1"), ({"atol": float("nan")}, "atol must be a finite number"),
    ({"min_agreement": 1.5}, "min_agreement must be a finite number between 0 and 1"),
    ({"max_accuracy_drop": -0.1}, "max_accuracy_drop must be a finite number between 0 and 1")])
def test_check_settings_are_validated_before_any_work(bundle, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export_model(bundle, tmp_path / "e", log=quiet, **kwargs)
    assert not (tmp_path / "e").exists()


def test_the_staging_folder_of_a_killed_export_is_removed_by_the_next(bundle, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs: an export killed mid-way
    stale = tmp_path / f".textclf-partial-model-{dead.pid}"
    (stale / "half").mkdir(parents=True)
    alive = tmp_path / f".textclf-partial-model-{os.getppid()}"  # the test runner's parent: a live export elsewhere
    alive.mkdir()
    export_model(bundle, tmp_path / "model", format="onnx", log=quiet)
    assert not stale.exists() and (tmp_path / "model" / "model.onnx").is_file()
    assert alive.is_dir()  # a running export's staging folder is never touched


def test_argument_errors(bundle, tmp_path):
    with pytest.raises(ConfigError, match="needs --format onnx"):
        export_model(bundle, tmp_path / "x", format="torchscript", quantize="int8")
    with pytest.raises(ConfigError, match="export format"):
        export_model(bundle, tmp_path / "x", format="tflite")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="--overwrite"):
        export_model(bundle, tmp_path / "full")
    assert ExportError.__mro__[1].__name__ == "TextclfError"


@pytest.mark.parametrize("names", [2, 11])  # fewer, or more, label names than the graph's 10 outputs
def test_an_export_whose_labels_do_not_match_its_outputs_is_refused_at_load(onnx_export, tmp_path, capsys, names):
    folder = shutil.copytree(onnx_export.folder, tmp_path / "export")
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    labels["names"] = (labels["names"] + ["extra"])[:names]
    (folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    pattern = rf"labels\.json lists {names} labels but model\.onnx has 10 outputs; the export is damaged"
    with pytest.raises(ModelLoadError, match=pattern):
        Predictor.from_pretrained(folder)
    assert main(["predict", "--model", str(folder), "Who wrote Hamlet?"]) == 2  # not a shape error at a batch
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1 and str(folder / "labels.json") in errors[0], err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
