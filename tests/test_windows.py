"""Long texts as sliding windows (textclf.data.windows): construction, batching, aggregation, training and prediction.

The tiny data's news titles are ~20 tokens, so a window of ``max_length=16`` (14 text tokens) makes most of them
two or three windows: every code path sees texts of one and of several windows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import textclf
from textclf.config import TrainConfig
from textclf.data.aggregation import aggregate_window_logits, attention_over_windows
from textclf.data.collate import LengthGroupedBatches
from textclf.data.labels import LabelMap
from textclf.data.readers import DatasetSplits
from textclf.data.windows import (
    WindowedTextDataset,
    WindowSpec,
    encode_windows,
    make_window_collate,
    special_framing,
    window_starts,
)
from textclf.errors import ConfigError, ModelLoadError
from textclf.model.classifier import TextClassifier, load_tokenizer

LONG = ("The committee will publish its final report on the proposed railway line next spring, after a long public "
        "consultation with residents, businesses and councils about noise, cost and the homes along the route. "
        "央行宣布下调存款准备金率0.5个百分点，释放长期资金约1万亿元。")
SHORT = ["Who wrote Hamlet?", "物流太慢了", "ok"]


def _config(**overrides) -> TrainConfig:
    values = dict(max_length=16, long_texts="windows", window_overlap=4, batch_size=16, lr=1e-3, precision="fp32",
                  device="cpu", seed=0, log_steps=1, epochs=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def _model(tiny_model_dir, aggregation="mean", num_labels=3, seed=0) -> TextClassifier:
    torch.manual_seed(seed)
    model = TextClassifier.from_encoder(str(tiny_model_dir), LabelMap([str(i) for i in range(num_labels)]),
                                        pooling="mean")
    model.configure_windows(aggregation)
    if model.window_scorer is not None:  # non-zero scores, so attention weights differ between windows
        torch.nn.init.normal_(model.window_scorer.weight, std=1.0)
    return model.eval()


# ==================================================================================================== construction


@pytest.mark.parametrize("capacity,overlap", [(10, 0), (10, 3), (14, 4), (62, 31)])
def test_window_starts_cover_every_token_with_the_given_overlap(capacity, overlap):
    for n in range(0, 200):
        starts = window_starts(n, capacity, overlap)
        assert starts[0] == 0 and starts[-1] + capacity >= n  # the first and the last token are read
        assert all(b - a == capacity - overlap for a, b in zip(starts, starts[1:]))  # consecutive windows share
        assert len(starts) == 1 or starts[-1] < n - overlap  # no window made only of tokens already read
        assert len(starts) == (1 if n <= capacity else 1 + -(-(n - capacity) // (capacity - overlap)))


def test_windows_are_framed_overlap_and_reassemble_the_text(tokenizer):
    spec = WindowSpec(max_length=16, overlap=4)
    prefix, suffix = special_framing(tokenizer)
    assert prefix == [tokenizer.cls_token_id] and suffix == [tokenizer.sep_token_id]
    flat, lengths, num_windows, needed = encode_windows(tokenizer, [LONG], spec)
    content = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    offsets = np.r_[0, np.cumsum(lengths)]
    windows = [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(lengths))]
    assert num_windows[0] == needed[0] == len(windows) == len(window_starts(len(content), 14, 4)) > 5
    assert all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in windows)
    assert all(len(w) == 16 for w in windows[:-1]) and len(windows[-1]) <= 16
    inner = [w[1:-1] for w in windows]
    assert all(a[-4:] == b[:4] for a, b in zip(inner, inner[1:]))  # 4 tokens of overlap
    assert inner[0] + [t for w in inner[1:] for t in w[4:]] == content  # nothing lost, nothing repeated


def test_a_text_shorter_than_a_window_is_one_window_equal_to_plain_tokenization(tokenizer):
    flat, lengths, num_windows, needed = encode_windows(tokenizer, SHORT, WindowSpec(max_length=16, overlap=4))
    assert num_windows.tolist() == needed.tolist() == [1, 1, 1]
    plain = tokenizer(SHORT, truncation=True, max_length=16)["input_ids"]
    assert flat.tolist() == [t for row in plain for t in row] and lengths.tolist() == [len(r) for r in plain]


def test_max_windows_keeps_the_first_windows_and_counts_the_text_as_truncated(tokenizer):
    full = WindowedTextDataset([LONG, *SHORT], None, tokenizer, WindowSpec(16, 4, max_windows=None))
    capped = WindowedTextDataset([LONG, *SHORT], None, tokenizer, WindowSpec(16, 4, max_windows=3))
    assert full.num_windows.tolist()[1:] == capped.num_windows.tolist()[1:] == [1, 1, 1]
    assert full.num_windows[0] > 3 and capped.num_windows[0] == 3
    assert (full.num_truncated, capped.num_truncated) == (0, 1)
    assert [w.tolist() for w in capped[0]["windows"]] == [w.tolist() for w in full[0]["windows"][:3]]
    assert capped.lengths[0] == 3 * 16 and capped.lengths[1] == len(full[1]["windows"][0])


def test_a_huge_text_is_cut_past_its_last_window_before_tokenizing(tokenizer):
    from test_data import RecordingTokenizer

    from textclf.data.readers import CHARS_PER_TOKEN

    huge = LONG + " filler words" * 500_000  # 6.5 MB: every window past the third is never read
    recording = RecordingTokenizer(tokenizer)
    capped = WindowedTextDataset([huge], None, recording, WindowSpec(16, 4, max_windows=3))
    assert recording.longest < 100 * CHARS_PER_TOKEN < len(huge)  # 3 windows of 16 need a few dozen tokens
    reference = WindowedTextDataset([LONG], None, tokenizer, WindowSpec(16, 4, max_windows=3))
    assert capped.num_truncated == 1 and capped.num_windows.tolist() == [3]
    assert [w.tolist() for w in capped[0]["windows"]] == [w.tolist() for w in reference[0]["windows"]]


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="train.long_texts"):
        TrainConfig(long_texts="chunks")
    with pytest.raises(ConfigError, match="train.window_aggregation"):
        TrainConfig(window_aggregation="sum")
    with pytest.raises(ConfigError, match="train.window_overlap"):
        TrainConfig(max_length=64, window_overlap=40)
    with pytest.raises(ConfigError, match="train.max_windows"):
        TrainConfig(max_windows=0)
    assert WindowSpec.from_config(TrainConfig()) is None  # truncation stays the default
    assert WindowSpec.from_config(TrainConfig(max_length=64, long_texts="windows")).overlap == 16


# ==================================================================================================== batching


def test_batches_keep_all_windows_of_a_text_together(tokenizer, tiny_data):
    dataset = WindowedTextDataset.from_split(tiny_data.train, tokenizer, WindowSpec(16, 4), tiny_data.label_map)
    assert len(dataset) == len(tiny_data.train) and dataset.num_windows.max() >= 3 and dataset.num_windows.min() == 1
    collate = make_window_collate(tokenizer.pad_token_id)
    sampler = LengthGroupedBatches(dataset.lengths, batch_size=8, seed=1)
    seen = []
    for rows in sampler.epoch_batches(0)[:5]:
        batch = collate([dataset[i] for i in rows])
        assert batch["num_windows"].tolist() == dataset.num_windows[rows].tolist()
        assert batch["labels"].tolist() == dataset.labels[rows].tolist() and len(batch["input_ids"]) == sum(
            dataset.num_windows[rows])
        expected = [w.tolist() for i in rows for w in dataset[i]["windows"]]  # each text's windows, in order
        got = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        assert got == expected
        seen += rows
    assert len(seen) == len(set(seen))


# ==================================================================================================== aggregation


@pytest.mark.parametrize("aggregation", ["mean", "max", "attention"])
def test_windowed_logits_equal_plain_logits_for_short_texts(tiny_model_dir, tokenizer, aggregation):
    model = _model(tiny_model_dir, aggregation)
    batch = make_window_collate(tokenizer.pad_token_id)(
        [WindowedTextDataset(SHORT, None, tokenizer, WindowSpec(16, 4))[i] for i in range(len(SHORT))])
    assert batch["num_windows"].tolist() == [1, 1, 1]
    with torch.no_grad():
        plain = model(batch["input_ids"], batch["attention_mask"])
        windowed = model(batch["input_ids"], batch["attention_mask"], num_windows=batch["num_windows"])
    torch.testing.assert_close(windowed, plain, rtol=0, atol=0)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_aggregated_logits_equal_the_reduction_of_separately_computed_window_logits(tiny_model_dir, tokenizer,
                                                                                     aggregation):
    model = _model(tiny_model_dir, aggregation)
    dataset = WindowedTextDataset([LONG, SHORT[0], LONG[:80]], None, tokenizer, WindowSpec(16, 4, max_windows=None))
    batch = make_window_collate(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        got = model(batch["input_ids"], batch["attention_mask"], num_windows=batch["num_windows"])
        for i in range(len(dataset)):
            one_by_one = torch.cat([model(w[None], torch.ones_like(w)[None]) for w in dataset[i]["windows"]])
            expected = one_by_one.mean(0) if aggregation == "mean" else one_by_one.max(0).values
            torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-5)


def test_attention_weights_are_a_softmax_over_each_texts_windows():
    pooled = torch.randn(6, 4)
    scores = torch.randn(6)
    counts = torch.tensor([1, 3, 2])
    got = attention_over_windows(pooled, scores, counts)
    expected = []
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        weights = scores[rows].softmax(0)
        expected.append((weights[:, None] * pooled[rows]).sum(0))
    torch.testing.assert_close(got, torch.stack(expected))
    torch.testing.assert_close(aggregate_window_logits(pooled, counts, "max")[1], pooled[1:4].max(0).values)


def test_attention_model_gets_gradients_into_the_scorer(tiny_model_dir, tokenizer):
    model = _model(tiny_model_dir, "attention").train()
    dataset = WindowedTextDataset([LONG, SHORT[0]], None, tokenizer, WindowSpec(16, 4))
    batch = make_window_collate(tokenizer.pad_token_id)([dataset[0], dataset[1]])
    logits = model(batch["input_ids"], batch["attention_mask"], num_windows=batch["num_windows"])
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert logits.shape == (2, 3) and model.window_scorer.weight.grad.abs().sum() > 0
    assert not model.hf_compatible  # the scorer has no Hugging Face counterpart


# ==================================================================================================== training


def _splits(tiny_data, rows: int = 96) -> DatasetSplits:
    return DatasetSplits(tiny_data.train.subset(range(rows)), tiny_data.dev, tiny_data.test, tiny_data.label_map)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    data = textclf.load_dataset(tiny_data_dir)
    out = tmp_path_factory.mktemp("windows") / "run"
    trainer = textclf.Trainer(str(tiny_model_dir), _splits(data), out,
                              _config(window_aggregation="attention", epochs=2, max_windows=3),
                              model_config=textclf.ModelConfig(pooling="mean"), progress=False)
    return trainer, trainer.fit(), data


def test_training_with_windows_saves_the_settings_and_reloads_them(trained):
    trainer, result, data = trained
    meta = json.loads((result.output_dir / "best" / "textclf.json").read_text())
    assert meta["windows"] == {"max_length": 16, "overlap": 4, "max_windows": 3, "aggregation": "attention"}
    assert meta["window_aggregation"] == "attention" and meta["hf_compatible"] is False
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert set(metrics["truncated_rows"]) == {"train", "dev", "test"}
    assert metrics["truncated_rows"]["test"] == trainer._tokenize(data.test).num_truncated
    reloaded = textclf.Trainer.from_pretrained(result.output_dir / "best", device="cpu", precision="fp32")
    assert reloaded.windows == trainer.windows and reloaded.model.window_scorer is not None
    assert reloaded.evaluate(data.test).to_dict() == trainer.evaluate(data.test).to_dict()


def test_predictor_windowed_prediction_equals_trainer_evaluation(trained):
    trainer, result, data = trained
    predictor = textclf.Predictor.from_pretrained(result.output_dir / "best", device="cpu", precision="fp32",
                                                  batch_size=7)
    assert predictor.windows == trainer.windows
    report = trainer.evaluate(data.test)
    logits = predictor.logits(data.test.texts)
    predicted = logits.argmax(1)
    labels = np.asarray(trainer.label_map.encode_many(data.test.labels))
    matrix = np.zeros_like(report.confusion_matrix)
    np.add.at(matrix, (labels, predicted), 1)
    assert (matrix == report.confusion_matrix).all()
    # and the logits themselves: the model aggregated in one batch of all texts equals the predictor's batches
    dataset = trainer._tokenize(data.test)
    batch = trainer.collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        expected = trainer.model.eval()(batch["input_ids"], batch["attention_mask"], num_windows=batch["num_windows"])
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-5)
    flags = [p.truncated for p in predictor.predict(data.test.texts)]
    assert sum(flags) == dataset.num_truncated and flags == list(dataset.num_windows < _needed(dataset, trainer))


def _needed(dataset, trainer):
    spec = WindowSpec(16, 4, max_windows=None)
    return WindowedTextDataset(dataset.texts, None, trainer.tokenizer, spec).num_windows


class _StopAt(textclf.Callback):
    """Stops training after optimizer step ``step`` the way SIGTERM does (checkpoint, then return)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.global_step == self.step:
            trainer._interrupt_signal = 15


@pytest.mark.parametrize("aggregation", ["max", "attention"])
def test_training_with_windows_resumes_exactly(tiny_model_dir, tiny_data, tmp_path, aggregation):
    def trainer(out, callbacks=()):
        config = _config(window_aggregation=aggregation, epochs=2, batch_size=8, grad_accum=2, eval_steps=4,
                         save_steps=4, max_windows=2, seed=3)
        return textclf.Trainer(str(tiny_model_dir), _splits(tiny_data, 64), out, config, progress=False,
                               model_config=textclf.ModelConfig(pooling="mean", dropout=0.1),
                               callbacks=list(callbacks))

    reference = trainer(tmp_path / "reference").fit()
    stopped = trainer(tmp_path / "run", [_StopAt(5)]).fit()
    assert stopped.interrupted and stopped.global_step == 5
    resumed = trainer(tmp_path / "run").fit(resume="auto")
    assert (resumed.global_step, resumed.best_step, resumed.dev) == (reference.global_step, reference.best_step,
                                                                      reference.dev)
    from safetensors.torch import load_file

    for name in ("last", "best"):
        a = load_file(str(tmp_path / "reference" / name / "model.safetensors"))
        b = load_file(str(tmp_path / "run" / name / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_windows_change_the_training_rows_the_model_sees(tiny_model_dir, tiny_data, tmp_path):
    """Truncating at 16 tokens and windows of 16 train on different inputs: the weights must differ."""
    common = dict(max_steps=3, eval_steps=None)
    results = {}
    for mode in ("truncate", "windows"):
        trainer = textclf.Trainer(str(tiny_model_dir), DatasetSplits(tiny_data.train.subset(range(48)), None, None,
                                                                     tiny_data.label_map),
                                  tmp_path / mode, _config(long_texts=mode, **common), progress=False)
        trainer.fit()
        results[mode] = trainer
    truncated = results["truncate"].train_dataset
    assert truncated.num_truncated > 10 and results["windows"].train_dataset.num_truncated == 0
    a, b = (results[m].model.head.weight for m in ("truncate", "windows"))
    assert not torch.equal(a, b)


# ==================================================================================================== export


def test_onnx_export_windows_mean_and_refuses_attention(trained, tiny_model_dir, tiny_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from textclf.deploy.export import export_model

    _, result, data = trained
    with pytest.raises(ConfigError, match="window_aggregation"):
        export_model(result.output_dir / "best", tmp_path / "refused", log=lambda *_: None)
    # a mean-aggregating bundle exports; the ONNX predictor windows and averages in numpy like PyTorch does
    config = _config(window_aggregation="mean", max_steps=2, eval_steps=None, max_windows=3)
    trainer = textclf.Trainer(str(tiny_model_dir), _splits(tiny_data, 32), tmp_path / "mean", config,
                              progress=False, model_config=textclf.ModelConfig(pooling="mean"))
    trainer.fit()
    export_model(tmp_path / "mean" / "best", tmp_path / "onnx", log=lambda *_: None)
    onnx = textclf.Predictor.from_pretrained(tmp_path / "onnx", device="cpu")
    torch_predictor = textclf.Predictor.from_pretrained(tmp_path / "mean" / "best", device="cpu", precision="fp32")
    assert onnx.backend.name == "onnx" and onnx.windows == torch_predictor.windows
    texts = [LONG, *data.test.texts[:20]]
    np.testing.assert_allclose(onnx.logits(texts), torch_predictor.logits(texts), atol=1e-4)
    with pytest.raises(ModelLoadError, match="attention"):
        textclf.Predictor(onnx.backend, onnx.tokenizer, onnx.label_map, windows=WindowSpec(16, 4, 3, "attention"))
