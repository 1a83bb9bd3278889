"""Distillation (``textclf distill``, ``train.recipe = "distill"``): a student learns a teacher's probabilities.

* The student is an ordinary model folder (Predictor, info, model card name the teacher); the teacher's
  log-probabilities for every training text (labelled and unlabelled) are cached in the run folder.
* ``--alpha 0`` is the control: bit for bit the same student trained on the labelled rows alone.
* A distillation run killed mid-step and resumed ends bit for bit where the uninterrupted run ends, and the resume
  reads the cached teacher targets instead of scoring the texts again.
* Bad input: a teacher with other labels, an empty unlabelled file, --student-layers 0 or above the teacher's, a
  folder that is not a model.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_encoder
from safetensors.torch import load_file

from textclf import cli
from textclf.errors import ConfigError
from textclf.model.classifier import TextClassifier
from textclf.train.distill import TARGETS_FILE, TEACHER_DIR

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "helpers" / "pausing_cli.py"
COMMON = ["--max-length", "32", "--device", "cpu", "--precision", "fp32", "--quiet"]
# Explicit sizes, so the runs compared below do not depend on what the automatic sizing picks.
STUDENT = ["--epochs", "2", "--lr", "5e-3", "--batch-size", "16", "--seed", "5", "--eval-steps", "4",
           "--save-steps", "4", "--log-steps", "2", "--dropout", "0.1", *COMMON]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A 4-layer tiny BERT (so students can keep 1 to 3 of its layers)."""
    from transformers import AutoConfig, BertModel

    folder = build_tiny_encoder(tmp_path_factory.mktemp("distill-enc"))
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, encoder, tiny_data_dir) -> Path:
    out = tmp_path_factory.mktemp("distill-teacher") / "run"
    assert cli.main(["train", "--data", str(tiny_data_dir), "--model", str(encoder), "--output", str(out),
                     "--recipe", "fine-tune", "--epochs", "3", "--lr", "5e-3", *COMMON]) == 0
    return out / "best"


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_data_dir) -> Path:
    """Unlabelled texts: the dev titles (one per line) plus one training title, which must not count twice."""
    with open(tiny_data_dir / "dev.csv", encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    with open(tiny_data_dir / "train.csv", encoding="utf-8", newline="") as handle:
        texts.append(next(csv.DictReader(handle))["text"])
    path = tmp_path_factory.mktemp("distill-pool") / "pool.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


def distill(*args: str) -> int:
    return cli.main(["distill", *args])


# ================================================================================================== the student


def test_keep_layers_spreads_or_takes_the_lowest_and_the_folder_reloads_smaller(tmp_path, encoder, tiny_data):
    model = TextClassifier.from_encoder(str(encoder), tiny_data.label_map)
    layers = model.encoder_layers()
    third = layers[3].attention.self.query.weight.clone()
    assert model.keep_layers(2) == [0, 3]  # spread: the first and the last
    assert model.config.num_hidden_layers == 2 and len(model.encoder_layers()) == 2
    assert torch.equal(model.encoder_layers()[1].attention.self.query.weight, third)  # initialised from layer 3
    model.save_pretrained(tmp_path / "small")
    assert len(TextClassifier.from_pretrained(tmp_path / "small").encoder_layers()) == 2

    lowest = TextClassifier.from_encoder(str(encoder), tiny_data.label_map)
    assert lowest.keep_layers(3, "lowest") == [0, 1, 2]
    assert TextClassifier.from_encoder(str(encoder), tiny_data.label_map).keep_layers(3) == [0, 2, 3]
    for bad in (0, 5):
        with pytest.raises(ConfigError, match=rf"model.keep_layers: {bad} .* it has 4; give 1 to 4"):
            TextClassifier.from_encoder(str(encoder), tiny_data.label_map).keep_layers(bad)


def test_distill_writes_an_ordinary_student_that_names_its_teacher(tmp_path, teacher, pool, tiny_data_dir, capsys):
    out = tmp_path / "student"
    assert distill("--teacher", str(teacher), "--data", str(tiny_data_dir), "--unlabelled", str(pool),
                   "--student-layers", "1", "--output", str(out), *STUDENT) == 0
    said = capsys.readouterr().out
    assert "kept encoder layers [0] of" in said
    assert "on 200 labelled and 50 unlabelled rows" in said  # the training title in the pool is not a second row

    # The teacher's log-probabilities, cached: one row per training text, columns in the data's label order.
    targets = load_file(str(out / TEACHER_DIR / TARGETS_FILE))["log_probs"]
    assert targets.shape == (250, 10)
    assert torch.allclose(targets.exp().sum(-1), torch.ones(250), atol=1e-5)
    from textclf import Predictor

    with open(tiny_data_dir / "train.csv", encoding="utf-8", newline="") as handle:
        first = next(csv.DictReader(handle))["text"]
    teacher_probs = Predictor.from_pretrained(teacher, device="cpu", precision="fp32").logits([first])
    assert np.allclose(targets[0].numpy(), torch.log_softmax(torch.from_numpy(teacher_probs), -1)[0].numpy(),
                       atol=1e-5)

    # The student: one encoder layer, loaded like any model; info and the card name the teacher.
    student = Predictor.from_pretrained(out / "best", device="cpu")
    assert student.model.config.num_hidden_layers == 1
    assert student.predict(first).label in student.label_map.names
    assert cli.main(["info", "--model", str(out / "best")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["teacher"]["model"] == str(teacher)
    assert set(info["teacher"]["test"]) >= {"accuracy", "macro_f1"}  # the teacher run's own scores
    assert info["train_config"]["recipe"] == "distill"
    assert f"distilled from the teacher `{teacher}`" in (out / "best" / "README.md").read_text(encoding="utf-8")


def test_alpha_zero_is_the_same_student_trained_on_the_labels_alone(tmp_path, teacher, pool, encoder,
                                                                     tiny_data_dir):
    control = tmp_path / "control"
    assert distill("--teacher", str(teacher), "--data", str(tiny_data_dir), "--unlabelled", str(pool),
                   "--student", str(encoder), "--student-layers", "2", "--alpha", "0", "--output", str(control),
                   *STUDENT) == 0
    plain = tmp_path / "plain"
    assert cli.main(["train", "--data", str(tiny_data_dir), "--model", str(encoder), "--keep-layers", "2",
                     "--recipe", "fine-tune", "--output", str(plain), *STUDENT]) == 0
    a, b = load_file(str(control / "last" / "model.safetensors")), load_file(str(plain / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (control / TEACHER_DIR).exists()  # the control never reads the teacher


def test_distilling_moves_the_student_toward_the_teacher(tmp_path, teacher, pool, encoder, tiny_data_dir):
    """The soft loss does what it says: on the pool, a student distilled with alpha 1 agrees with the teacher more
    often than the control does (the tiny encoder reads these titles badly, so agreement, not accuracy)."""
    from textclf import Predictor

    texts = pool.read_text(encoding="utf-8").split("\n")[:-1]
    teacher_says = Predictor.from_pretrained(teacher, device="cpu").predict(texts)
    agreement = {}
    for alpha in ("0", "1"):
        out = tmp_path / f"alpha-{alpha}"
        assert distill("--teacher", str(teacher), "--data", str(tiny_data_dir), "--unlabelled", str(pool),
                       "--student", str(encoder), "--student-layers", "2", "--alpha", alpha, "--output", str(out),
                       *STUDENT, "--epochs", "4") == 0
        said = Predictor.from_pretrained(out / "last", device="cpu").predict(texts)
        agreement[alpha] = np.mean([s.label == t.label for s, t in zip(said, teacher_says)])
    assert agreement["1"] > agreement["0"], agreement


# ================================================================================================== resume


def _start(args: list[str], point: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TEXTCLF_TEST_PAUSE": point, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(HELPER), *args], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, env=env, cwd=ROOT)  # noqa: SIM115


def test_a_killed_distillation_resumes_bit_for_bit_on_the_cached_teacher(tmp_path, teacher, pool, tiny_data_dir):
    def args(out: Path) -> list[str]:
        return ["distill", "--teacher", str(teacher), "--data", str(tiny_data_dir), "--unlabelled", str(pool),
                "--student-layers", "2", "--output", str(out), *STUDENT, "--resume", "auto"]

    reference = _start(args(tmp_path / "reference"), "", tmp_path / "reference.log")
    reference.communicate(timeout=300)
    assert reference.returncode == 0, (tmp_path / "reference.log").read_text()

    out = tmp_path / "run"
    killed = _start(args(out), "micro:6:0", tmp_path / "killed.log")
    for line in killed.stdout:
        if line.startswith("PAUSED"):
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    targets = out / TEACHER_DIR / TARGETS_FILE
    assert targets.is_file()

    resumed = _start(args(out), "", tmp_path / "resumed.log")
    said, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()
    assert "resuming from" in said and "scoring" not in said  # the teacher was not run again
    assert torch.equal(load_file(str(targets))["log_probs"],
                       load_file(str(tmp_path / "reference" / TEACHER_DIR / TARGETS_FILE))["log_probs"])
    for name in ("last", "best"):
        a = load_file(str(tmp_path / "reference" / name / "model.safetensors"))
        b = load_file(str(out / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}/ differs from the uninterrupted run"
    assert json.loads((out / "metrics.json").read_text()) == \
        json.loads((tmp_path / "reference" / "metrics.json").read_text())


# ================================================================================================== bad input


def test_a_teacher_with_other_labels_is_refused_naming_both(tmp_path, teacher, tiny_data_dir, capsys):
    data = tmp_path / "data.csv"
    with open(tiny_data_dir / "train.csv", encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] != "sports"]
    for row in rows[:10]:
        row["label"] = "weather"
    with open(data, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "student"
    assert distill("--teacher", str(teacher), "--data", str(data), "--output", str(out), *STUDENT) == 2
    err = capsys.readouterr().err
    assert "the teacher lacks ['weather']" in err and "the data lacks ['sports']" in err
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--student-layers", "0"], "model.keep_layers: must be >= 1"),
    (["--student-layers", "9"], "model.keep_layers: 9 is not a number of layers the encoder can keep: it has 4"),
    (["--alpha", "1.5"], "train.distill_alpha: must be in [0, 1]"),
])
def test_bad_student_settings_are_refused_before_anything_is_written(tmp_path, teacher, tiny_data_dir, capsys,
                                                                     flags, message):
    out = tmp_path / "student"
    assert distill("--teacher", str(teacher), "--data", str(tiny_data_dir), "--output", str(out), *flags,
                   *STUDENT) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_unlabelled_file_and_a_missing_teacher_are_clear_errors(tmp_path, teacher, tiny_data_dir, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n", encoding="utf-8")
    assert distill("--teacher", str(teacher), "--data", str(tiny_data_dir), "--unlabelled", str(empty),
                   "--output", str(tmp_path / "a"), *STUDENT) == 2
    assert str(empty) in capsys.readouterr().err

    (tmp_path / "not-a-model").mkdir()
    assert distill("--teacher", str(tmp_path / "not-a-model"), "--data", str(tiny_data_dir), "--output",
                   str(tmp_path / "b"), *STUDENT) == 2
    assert "is not a textclf model folder" in capsys.readouterr().err
    assert distill("--data", str(tiny_data_dir), "--output", str(tmp_path / "c"), *STUDENT) == 2
    assert "no teacher; pass --teacher FOLDER" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tiny_data_dir), "--teacher", str(teacher), "--output",
                     str(tmp_path / "d"), *STUDENT]) == 2
    assert "run it as textclf distill" in capsys.readouterr().err


# ================================================================================================== multi-label


def test_the_soft_terms_are_the_kl_divergences_of_their_links():
    from textclf.model.links import SigmoidLink, SoftmaxLink

    rng = np.random.default_rng(0)
    student, teacher = (torch.tensor(rng.normal(size=(5, 4)) * 3, dtype=torch.float32) for _ in range(2))
    for link in (SoftmaxLink(), SigmoidLink()):
        assert float(link.soft_target_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
        assert float(link.soft_target_loss(student, teacher, 2.0)) > 0
    # binary KL per label, averaged over rows and labels, times T^2
    p, q = torch.sigmoid(teacher / 2), torch.sigmoid(student / 2)
    by_hand = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean() * 4
    assert float(SigmoidLink().soft_target_loss(student, teacher, 2.0)) == pytest.approx(float(by_hand), rel=1e-5)


@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory, tiny_data_dir) -> Path:
    """The tiny titles with a second label each (short or long)."""
    folder = tmp_path_factory.mktemp("distill-ml")
    for name in ("train.csv", "dev.csv", "test.csv"):
        with open(tiny_data_dir / name, encoding="utf-8", newline="") as src, \
                open(folder / name, "w", encoding="utf-8", newline="") as dst:
            writer = csv.writer(dst)
            writer.writerow(["text", "label"])
            for row in csv.DictReader(src):
                writer.writerow([row["text"], f"{row['label']}|{'short' if len(row['text']) < 20 else 'long'}"])
    return folder


def test_a_multilabel_teacher_distils_a_multilabel_student(tmp_path, encoder, pool, multilabel_data, teacher,
                                                           capsys):
    from textclf import Predictor

    teacher_run = tmp_path / "teacher"
    assert cli.main(["train", "--data", str(multilabel_data), "--multi-label", "--model", str(encoder), "--output",
                     str(teacher_run), "--recipe", "fine-tune", "--epochs", "3", "--lr", "5e-3", *COMMON]) == 0
    out = tmp_path / "student"
    assert distill("--teacher", str(teacher_run / "best"), "--data", str(multilabel_data), "--multi-label",
                   "--unlabelled", str(pool), "--student-layers", "1", "--alpha", "0.5", "--output", str(out),
                   *STUDENT) == 0
    # the cached targets are the teacher's log-odds, label by label
    targets = load_file(str(out / TEACHER_DIR / TARGETS_FILE))["log_probs"]
    with open(multilabel_data / "train.csv", encoding="utf-8", newline="") as handle:
        first = next(csv.DictReader(handle))["text"]
    said = Predictor.from_pretrained(teacher_run / "best", device="cpu", precision="fp32")
    expected = said.logits([first])[0][[said.label_map.names.index(n) for n in _label_names(out)]]
    assert np.allclose(targets[0].numpy(), expected, atol=1e-4)
    student = Predictor.from_pretrained(out / "best", device="cpu")
    assert student.model.config.num_hidden_layers == 1
    assert isinstance(student.predict(first).label, list)  # a label set, decided at the student's thresholds
    # a single-label teacher for multi-label data (and back) is refused by kind
    capsys.readouterr()
    assert distill("--teacher", str(teacher), "--data", str(multilabel_data), "--multi-label", "--output",
                   str(tmp_path / "mixed"), *STUDENT) == 2
    assert "is single-label (one label per text) and the training data is multi-label" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()


def _label_names(run: Path) -> list[str]:
    from textclf.data.labels import LabelMap

    return list(LabelMap.load(run / "best").names)
