"""The examples run end to end, shrunk to seconds: a tiny model, tests/data/tiny and a few optimizer steps.

The scripts are imported and their ``main(argv)`` called in-process (one torch import for all of them); the
notebook is executed cell by cell in a fresh Jupyter kernel with nbclient, after its parameters cell is rewritten.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TINY = ROOT / "tests" / "data" / "tiny"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


def test_quickstart_script(tmp_path, tiny_model_dir, capsys):
    quickstart = load_example("quickstart")
    out = tmp_path / "quickstart"
    report = quickstart.main(["--model", str(tiny_model_dir), "--data", str(TINY), "--output", str(out),
                              "--max-steps", "3", "--max-length", "32"])
    assert report.num_rows == 50
    printed = capsys.readouterr().out
    assert "== test set (50 questions)" in printed and "macro avg" in printed
    assert f"tensorboard --logdir {out / 'runs'}" in printed and str(out / "best") in printed
    assert sum(q in printed for q in quickstart.QUESTIONS) == len(quickstart.QUESTIONS)
    assert (out / "best" / "model.safetensors").is_file()


def test_quickstart_defaults_point_at_the_bundled_data():
    quickstart = load_example("quickstart")
    args = quickstart.parse_args([])
    assert args.model == "minilm" and Path(args.data) == EXAMPLES / "data" / "trec"
    assert (Path(args.data) / "SOURCE.md").is_file()


def test_chinese_news_builds_bert_from_config(tmp_path, capsys):
    chinese_news = load_example("chinese_news")
    out = tmp_path / "news"
    report = chinese_news.main(["--data", str(TINY), "--output", str(out), "--hidden-size", "32", "--layers", "1",
                                "--max-steps", "3", "--max-length", "32", "--batch-size", "32"])
    assert report.num_rows == 50
    encoder_config = json.loads((tmp_path / "news-encoder" / "config.json").read_text())
    assert encoder_config["vocab_size"] == 21128 and encoder_config["hidden_size"] == 32  # bert-base-chinese vocab
    saved_tokenizer = json.loads((out / "best" / "tokenizer.json").read_text(encoding="utf-8"))
    assert "蓝" in saved_tokenizer["model"]["vocab"]
    printed = capsys.readouterr().out
    assert sum(title in printed for title in chinese_news.TITLES) == len(chinese_news.TITLES)


def test_bundled_chinese_tokenizer_is_complete():
    from transformers import AutoTokenizer

    folder = EXAMPLES / "tokenizers" / "bert-base-chinese"
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "config.json", "SOURCE.md"):
        assert (folder / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 21128
    assert tokenizer.tokenize("央行降准") == ["央", "行", "降", "准"]


def test_custom_head_subclasses(tmp_path, tiny_model_dir):
    from torch import nn

    custom_head = load_example("custom_head")
    out = tmp_path / "head"
    report = custom_head.main(["--model", str(tiny_model_dir), "--data", str(TINY), "--output", str(out),
                               "--max-steps", "3", "--max-length", "32", "--head-lr-scale", "5"])
    assert report.num_rows == 50
    meta = json.loads((out / "best" / "textclf.json").read_text())
    assert meta["custom_head"] is True and meta["hf_compatible"] is False and meta["pooling"] == "mean"
    model = custom_head.MLPClassifier.from_pretrained(out / "best")
    assert isinstance(model.head, nn.Sequential) and isinstance(model.head[0], nn.Linear) and len(model.head) == 4
    # Imported here by file (as a script is run), so the folder names the class by its file, which the CLI takes.
    spec = f"{(EXAMPLES / 'custom_head.py').resolve()}:MLPClassifier"
    assert meta["model_class"] == spec
    card = (out / "best" / "README.md").read_text(encoding="utf-8")  # its snippet names the class, and no HF load
    assert f"model_class={json.dumps(spec)}" in card and "AutoModelForSequenceClassification" not in card
    from textclf import cli

    assert cli.main(["predict", "--model", str(out / "best"), "--device", "cpu", "What is DNA?"]) == 2
    assert cli.main(["predict", "--model", str(out / "best"), "--model-class", spec, "--device", "cpu",
                     "What is DNA?"]) == 0


def test_custom_head_learning_rates(tiny_model_dir, tiny_data, tmp_path):
    import textclf

    custom_head = load_example("custom_head")
    model = custom_head.MLPClassifier.from_encoder(str(tiny_model_dir), tiny_data.label_map)
    trainer = custom_head.HeadLRTrainer(model=model, data=tiny_data, output_dir=tmp_path, progress=False,
                                        config=textclf.TrainConfig(lr=1e-4, max_steps=10, warmup_ratio=0.0))
    optimizer, _ = trainer.configure_optimizers()
    head_ids = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        is_head = {id(p) in head_ids for p in group["params"]}
        assert len(is_head) == 1  # a group is all head or all encoder
        assert group["lr"] == pytest.approx(1e-3 if is_head.pop() else 1e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_imbalance_subset_and_weights(tiny_data):
    imbalance = load_example("imbalance")
    train = imbalance.make_imbalanced(tiny_data.train, imbalance=10)
    counts = Counter(train.labels)
    assert len(counts) == len(tiny_data.label_map)  # every class survives
    assert max(counts.values()) == 20 and min(counts.values()) == 2  # 20 per class in tiny, down to 1/10
    weights = imbalance.inverse_frequency_weights(train.labels, tiny_data.label_map)
    for name, weight in zip(tiny_data.label_map.names, weights.tolist()):
        assert weight == pytest.approx(len(train) / (len(counts) * counts[name]))


def test_imbalance_script(tmp_path, tiny_model_dir, capsys):
    imbalance = load_example("imbalance")
    reports = imbalance.main(["--model", str(tiny_model_dir), "--data", str(TINY), "--output", str(tmp_path),
                              "--max-steps", "2", "--max-length", "32", "--imbalance", "5"])
    assert set(reports) == {"plain", "weighted", "sampler"}
    assert all((tmp_path / name / "best").is_dir() for name in reports)
    assert "per-class F1" in capsys.readouterr().out


def test_weighted_run_uses_the_balanced_weights(tiny_model_dir, tiny_data, tmp_path):
    import textclf

    imbalance = load_example("imbalance")
    train = imbalance.make_imbalanced(tiny_data.train, imbalance=10)
    data = textclf.DatasetSplits(train=train, dev=tiny_data.dev, test=tiny_data.test, label_map=tiny_data.label_map)
    trainer = textclf.Trainer(model=str(tiny_model_dir), data=data, output_dir=tmp_path, progress=False,
                              config=textclf.TrainConfig(max_length=32, **imbalance.RUNS["weighted"]))
    expected = imbalance.inverse_frequency_weights(train.labels, tiny_data.label_map)
    assert trainer.class_weights.tolist() == pytest.approx(expected.tolist())


def test_notebook_runs_on_tiny_data(tmp_path, tiny_model_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    params = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(params) == 1 and notebook.cells.index(params[0]) == 1
    assert 'MODEL = "minilm"' in params[0].source and 'DATA = "examples/data/trec"' in params[0].source
    params[0].source = "\n".join([
        f"MODEL = {str(tiny_model_dir)!r}",
        f"DATA = {str(TINY)!r}",
        f"OUTPUT = {str(tmp_path / 'notebook')!r}",
        "EPOCHS = 1",
        "LR = 1e-3",
        "MAX_STEPS = 3",
        "TINY = False",
    ])
    # The kernel is a fresh process: make sure it imports this checkout's textclf.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()

    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "macro avg" in outputs and "optimizer steps" in outputs
    assert (tmp_path / "notebook" / "best" / "model.safetensors").is_file()


def test_committed_notebook_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_few_labels_script(tmp_path, tiny_sentence_encoder, capsys):
    few = load_example("few_labels")
    outcome = few.main(["--model", str(tiny_sentence_encoder), "--data", str(TINY), "--per-class", "4",
                        "--output", str(tmp_path / "run"), "--max-steps", "3", "--lr-find"])
    assert outcome["recipe"] == "few-shot"  # a sentence encoder and 4 rows per class
    printed = capsys.readouterr().out
    assert "40 training rows (4 per class of 10)" in printed and "recipe auto: few-shot" in printed
    assert "lr-find:" in printed and (tmp_path / "run-lr" / "lr_find.png").is_file()


def test_label_rounds_script(tmp_path, tiny_sentence_encoder, capsys):
    from textclf.data.readers import read_split

    names = sorted(set(read_split(TINY / "test.csv", "test").labels))
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    rounds = load_example("label_rounds")
    curve = rounds.main(["--data", str(TINY), "--names", str(tmp_path / "labels.txt"), "--model",
                         str(tiny_sentence_encoder), "--rounds", "2", "--per-class", "1", "--max-steps", "2",
                         "--output", str(tmp_path / "runs")])
    assert [point["labels"] for point in curve] == [0, 10, 20]  # names only, then one label per class per round
    assert curve[1]["strategy"].startswith("first batch") and curve[2]["strategy"] == "typical"
    assert "test accuracy" in capsys.readouterr().out
    first, second = (tmp_path / "runs" / "round0.csv").read_text(encoding="utf-8-sig"), \
        (tmp_path / "runs" / "round1.csv").read_text(encoding="utf-8-sig")
    assert not set(first.splitlines()[1:]) & set(second.splitlines()[1:])  # no row labelled twice
