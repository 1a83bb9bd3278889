"""A model saved from a ``TextClassifier`` subclass (a custom head): its folder names the class, and predict, evaluate,
serve and export load it once the user opts in with ``model_class=`` / ``--model-class``, never silently."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from textclf import cli
from textclf.data.labels import LabelMap
from textclf.deploy.predict import Predictor
from textclf.errors import ModelLoadError
from textclf.model import custom
from textclf.model.classifier import TextClassifier, load_tokenizer, resolve_model_class
from textclf.model.ensemble import load_model
from textclf.train.trainer import Trainer

TINY = Path(__file__).parent / "data" / "tiny"
TEXTS = ["How far is it from Denver to Aspen?", "央行宣布下调存款准备金率0.5个百分点", "Who wrote Hamlet?"]

MODULE = '''
"""The user's own model code: a two-layer head, and a class that is no model."""
from torch import nn

import textclf


class MLPClassifier(textclf.TextClassifier):
    def build_head(self, hidden_size, num_labels):
        return nn.Sequential(nn.Linear(hidden_size, 16), nn.GELU(), nn.Linear(16, num_labels))


class NotAModel:
    pass
'''


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> Path:
    """The user's module, in a folder of its own (not on sys.path: it is loaded by file)."""
    path = tmp_path_factory.mktemp("user-code") / "mlp_head.py"
    path.write_text(MODULE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def spec(code) -> str:
    return f"{code}:MLPClassifier"


@pytest.fixture(scope="module")
def folder(tiny_model_dir, code, spec, tmp_path_factory) -> Path:
    """A saved MLPClassifier over the tiny encoder, with the tiny data set's labels."""
    from textclf.data.readers import load_dataset

    torch.manual_seed(0)
    cls = resolve_model_class(spec)
    model = cls.from_encoder(str(tiny_model_dir), load_dataset(TINY).label_map, pooling="mean").eval()
    out = tmp_path_factory.mktemp("custom") / "best"
    model.save_pretrained(out, load_tokenizer(str(tiny_model_dir)),
                          extra={"train_config": {"max_length": 32}, "base_model": "tiny-bert"})
    return out


def _run(capsys, *args) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- what the folder records -------------------------------------------------------------------------------------

def test_the_folder_names_the_class_and_a_plain_model_names_none(folder, code, tiny_model_dir, tmp_path):
    meta = json.loads((folder / "textclf.json").read_text())
    assert meta["model_class"] == f"{code.resolve()}:MLPClassifier"  # loaded by file: recorded by file
    assert meta["custom_head"] is True and meta["head_class"] == "Sequential"
    plain = TextClassifier.from_encoder(str(tiny_model_dir), LabelMap(["a", "b"]))
    plain.save_pretrained(tmp_path / "plain", extra={"model_class": "copied:Stale"})
    assert "model_class" not in json.loads((tmp_path / "plain" / "textclf.json").read_text())
    assert isinstance(load_model(tmp_path / "plain"), TextClassifier)  # old and plain folders load as before


def test_an_importable_module_is_recorded_by_name_a_script_by_its_path(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    from userpkg.models import MLPClassifier  # importable only once the path is added

    assert custom.class_spec(MLPClassifier) == "userpkg.models:MLPClassifier"
    assert resolve_model_class("userpkg.models:MLPClassifier") is MLPClassifier
    script = type("Scripted", (TextClassifier,), {"__module__": "__main__"})
    if getattr(sys.modules["__main__"], "__file__", None) is None:
        pytest.skip("this test runner's __main__ has no file")
    main_file = Path(sys.modules["__main__"].__file__).resolve()
    assert custom.class_spec(script) == f"{main_file}:Scripted"  # python examples/custom_head.py: the file's path


# ---- loading needs the opt-in ------------------------------------------------------------------------------------

def test_loading_without_the_class_names_the_flag_and_the_python_argument(folder, spec, code):
    for load in (lambda: load_model(folder), lambda: Predictor.from_pretrained(folder),
                 lambda: Trainer.from_pretrained(folder), lambda: TextClassifier.from_pretrained(folder)):
        with pytest.raises(ModelLoadError) as error:
            load()
        message = str(error.value)
        assert f"--model-class {code.resolve()}:MLPClassifier" in message and "model_class=MLPClassifier" in message
        assert str(folder) in message and "trust" in message


def test_the_class_object_or_its_spec_loads_the_same_model(folder, spec):
    cls = resolve_model_class(spec)
    assert resolve_model_class(spec) is cls  # one file, one module: the same class every time
    by_class, by_spec = load_model(folder, cls).eval(), load_model(folder, spec).eval()
    assert type(by_spec) is cls and isinstance(by_class.head, torch.nn.Sequential)
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(by_class(ids, mask), by_spec(ids, mask), atol=0, rtol=0)
    predictor = Predictor.from_pretrained(folder, device="cpu", model_class=spec)
    assert len(predictor.predict(TEXTS)) == len(TEXTS)


def test_a_wrong_class_is_refused_and_a_different_subclass_must_fit_the_weights(folder, code):
    with pytest.raises(ModelLoadError, match="does not subclass textclf.model.classifier.TextClassifier"):
        load_model(folder, f"{code}:NotAModel")
    with pytest.raises(ModelLoadError, match="does not subclass"):
        load_model(folder, dict)
    other = type("LinearAgain", (TextClassifier,), {})  # the user's choice is accepted; the weights then decide
    with pytest.raises(ModelLoadError, match="saved from .*MLPClassifier"):
        load_model(folder, other)


# ---- the command line --------------------------------------------------------------------------------------------

def test_predict_and_evaluate_with_model_class(folder, spec, code, capsys):
    status, out, _ = _run(capsys, "info", "--model", folder)
    assert status == 0 and json.loads(out)["model_class"] == f"{code.resolve()}:MLPClassifier"
    status, out, err = _run(capsys, "predict", "--model", folder, "--model-class", spec, "--device", "cpu", *TEXTS)
    assert status == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == TEXTS
    status, out, err = _run(capsys, "evaluate", "--model", folder, "--model-class", spec, "--data",
                            TINY / "test.csv", "--device", "cpu")
    assert status == 0, err
    assert "accuracy" in out


@pytest.mark.parametrize("command", ["predict", "evaluate", "serve", "export"])
def test_without_the_flag_every_command_exits_2_naming_it(folder, spec, command, tmp_path, capsys):
    if command == "serve":  # without fastapi, serve stops before loading the model, saying how to install it
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    extra = {"predict": ["one text"], "evaluate": ["--data", TINY / "test.csv"], "serve": [],
             "export": ["--output", tmp_path / "export"]}[command]
    code, _, err = _run(capsys, command, "--model", folder, "--device", "cpu", *extra) if command != "export" \
        else _run(capsys, command, "--model", folder, *extra)
    assert code == 2 and "Traceback" not in err
    assert f"--model-class {Path(spec.rpartition(':')[0]).resolve()}:MLPClassifier" in err


@pytest.mark.parametrize("given, message", [
    ("{dir}/missing.py:MLPClassifier", "does not exist"),
    ("{file}:NotAModel", "does not subclass"),
    ("{file}:Nope", "has no class Nope; the TextClassifier subclasses there: MLPClassifier"),
    ("no_such_module_xyz:MLPClassifier", "not installed and not on PYTHONPATH"),
    ("MLPClassifier", "expected MODULE:CLASS"),
    ("{dir}/broken.py:MLPClassifier", "broken.py (line 2) failed: ZeroDivisionError"),
])
def test_a_bad_model_class_exits_2_with_the_fix(folder, code, given, message, capsys):
    (code.parent / "broken.py").write_text("import textclf\nx = 1 / 0\n", encoding="utf-8")
    value = given.format(dir=code.parent, file=code)
    status, _, err = _run(capsys, "predict", "--model", folder, "--model-class", value, "--device", "cpu", "a text")
    assert status == 2 and "Traceback" not in err
    assert message in err and "--model-class" in err


def test_serve_loads_the_class_and_answers(folder, spec, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from test_serve import running

    from textclf.deploy import serve as serve_module

    served = {}
    monkeypatch.setattr(serve_module, "serve", lambda predictor, *args, **kwargs: served.update(p=predictor))
    code, out, err = _run(capsys, "serve", "--model", folder, "--model-class", spec, "--device", "cpu")
    assert code == 0, err
    predictor = served["p"]
    assert isinstance(predictor.model, resolve_model_class(spec))
    with running(serve_module.create_app(predictor, serve_module.ServeConfig())) as (url, _):
        answer = httpx.post(f"{url}/classify", json={"text": TEXTS[0]}, timeout=30)
    assert answer.status_code == 200 and answer.json()["label"] in predictor.label_map.names


def test_an_export_needs_the_class_once_and_then_loads_without_it(folder, spec, code, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # The user's code is an input: an export over the folder holding it is refused before anything is loaded.
    status, _, err = _run(capsys, "export", "--model", folder, "--model-class", spec, "--output", code.parent,
                          "--overwrite")
    assert status == 2 and "--model-class" in err and code.is_file()
    out = tmp_path / "onnx"
    status, _, err = _run(capsys, "export", "--model", folder, "--model-class", spec, "--output", out,
                          "--data", TINY / "test.csv", "--num-samples", "16")
    assert status == 0, err
    assert "model_class" not in json.loads((out / "textclf.json").read_text())
    exported = Predictor.from_pretrained(out)  # no class: the graph holds the head
    reference = Predictor.from_pretrained(folder, device="cpu", precision="fp32", model_class=spec)
    assert [p.label for p in exported.predict(TEXTS)] == [p.label for p in reference.predict(TEXTS)]
