"""Tests for textclf.config: validation errors name the field, YAML/JSON round trip, unknown keys, field docs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from textclf.config import DataConfig, ModelConfig, RunConfig, RunPaths, TrainConfig, field_docs, load_mapping
from textclf.errors import ConfigError

BAD_VALUES = [
    (DataConfig, "text_column", ""),
    (DataConfig, "label_column", ""),
    (DataConfig, "label_separator", ""),
    (DataConfig, "dev_size", 0.0),
    (DataConfig, "dev_size", 1.0),
    (DataConfig, "test_size", -0.1),
    (DataConfig, "test_size", 1.0),
    (DataConfig, "encoding", "no-such-codec"),
    (ModelConfig, "name", ""),
    (ModelConfig, "pooling", "max"),
    (ModelConfig, "dropout", 1.0),
    (ModelConfig, "dropout", -0.1),
    (ModelConfig, "freeze_layers_below", -1),
    (ModelConfig, "keep_layers", 0),
    (ModelConfig, "layer_choice", "top"),
    (TrainConfig, "epochs", 0),
    (TrainConfig, "max_steps", 0),
    (TrainConfig, "lr", 0.0),
    (TrainConfig, "lr", -1e-5),
    (TrainConfig, "weight_decay", -0.01),
    (TrainConfig, "warmup_ratio", 1.0),
    (TrainConfig, "warmup_ratio", -0.1),
    (TrainConfig, "schedule", "step"),
    (TrainConfig, "batch_size", 0),
    (TrainConfig, "grad_accum", 0),
    (TrainConfig, "max_tokens", 64),
    (TrainConfig, "max_length", 4),
    (TrainConfig, "max_grad_norm", 0.0),
    (TrainConfig, "precision", "fp8"),
    (TrainConfig, "device", ""),
    (TrainConfig, "eval_steps", 0),
    (TrainConfig, "save_steps", 0),
    (TrainConfig, "keep_checkpoints", 0),
    (TrainConfig, "metric", "f1"),
    (TrainConfig, "patience", 0),
    (TrainConfig, "log_steps", 0),
    (TrainConfig, "eval_batch_size", 0),
    (TrainConfig, "num_workers", -1),
    (TrainConfig, "class_weights", "a:2"),
    (TrainConfig, "focal_gamma", -1.0),
    (TrainConfig, "label_smoothing", 1.0),
    (TrainConfig, "sampler", "oversample"),
    (TrainConfig, "recipe", "setfit"),
    (TrainConfig, "pairs_per_row", 0),
    (TrainConfig, "recipe", "distill"),  # without a teacher
    (TrainConfig, "distill_alpha", 1.5),
    (TrainConfig, "distill_temperature", 0),
    (TrainConfig, "few_shot_head", "mlp"),
    (TrainConfig, "layer_lr_decay", 0.0),
    (TrainConfig, "head_lr", 0.0),
    (TrainConfig, "unfreeze_every", 0),
    (TrainConfig, "threshold_tuning", "best"),
    (TrainConfig, "threshold_min_positives", 0),
    (TrainConfig, "long_texts", "chunks"),
    (TrainConfig, "window_overlap", 100),
    (TrainConfig, "window_aggregation", "sum"),
    (TrainConfig, "max_windows", 0),
]

# Values of the wrong type, as a YAML file or a script easily produces them ("5e-5" is a string to YAML 1.1).
BAD_TYPES = [
    (TrainConfig, "lr", "5e-5"),
    (TrainConfig, "epochs", "3"),
    (TrainConfig, "batch_size", 2.5),
    (TrainConfig, "group_by_length", "no"),
    (TrainConfig, "max_grad_norm", "1.0"),
    (TrainConfig, "batch_size", True),
    (DataConfig, "encoding", 8),
    (DataConfig, "multi_label", "yes"),
    (ModelConfig, "dropout", "0.1"),
    (ModelConfig, "freeze_layers_below", 1.5),
    (ModelConfig, "normalize", "yes"),
    (DataConfig, "synonyms", 3),
    (DataConfig, "label_names", 3),
    (DataConfig, "unlabelled", 3),
    (TrainConfig, "teacher", 3),
    (DataConfig, "fold_width", "yes"),
    (DataConfig, "augment", "shuffle"),
    (DataConfig, "augment_copies", 0),
    (DataConfig, "augment_prob", 1.5),
    (DataConfig, "augment_synonyms", 3),
    (DataConfig, "entities", ["a.csv"]),
    (TrainConfig, "calibrate", "no"),
    (TrainConfig, "speedups", "yes"),
]

SECTION = {DataConfig: "data", ModelConfig: "model", TrainConfig: "train"}


@pytest.mark.parametrize(("klass", "name", "value"), BAD_VALUES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bad_value_names_the_field(klass, name, value):
    with pytest.raises(ConfigError) as info:
        klass(**{name: value})
    assert f"{SECTION[klass]}.{name}" in str(info.value)


@pytest.mark.parametrize(("klass", "name", "value"), BAD_TYPES)
def test_bad_type_names_the_field(klass, name, value):
    with pytest.raises(ConfigError) as info:
        klass(**{name: value})
    assert f"{SECTION[klass]}.{name}" in str(info.value)


def test_every_validated_field_is_covered():
    # Each field of the three sections has at least one rejected value above (RunPaths holds free-form paths).
    for klass in SECTION:
        covered = {name for k, name, _ in BAD_VALUES + BAD_TYPES if k is klass}
        assert covered | {"multi_label", "strict", "split_seed", "seed", "group_by_length"} >= {
            f.name for f in dataclasses.fields(klass)}


def test_good_values_are_accepted():
    TrainConfig(epochs=0.5, max_steps=10, lr=1e-4, warmup_ratio=0.0, max_grad_norm=None, patience=2, eval_steps=5,
                precision="bf16", schedule="cosine", metric="loss")
    TrainConfig(epochs=3, lr=1)  # ints where floats belong are fine
    ModelConfig(pooling="mean", dropout=0.0, freeze_layers_below=0)
    DataConfig(dev_size=0.2, test_size=0.0, encoding="gbk", multi_label=True)


def test_dev_plus_test_must_leave_training_rows():
    with pytest.raises(ConfigError, match="dev_size"):
        DataConfig(dev_size=0.5, test_size=0.5)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def _custom_run_config() -> RunConfig:
    return RunConfig(
        data=DataConfig(text_column="sentence", label_column="intent", multi_label=True, label_separator=";",
                        encoding="gbk", dev_size=0.2, test_size=0.0, split_seed=7, strict=True),
        model=ModelConfig(name="hfl/chinese-roberta-wwm-ext", pooling="mean", dropout=0.25, freeze_layers_below=3),
        train=TrainConfig(epochs=2.5, max_steps=123, lr=3e-5, weight_decay=0.0, warmup_ratio=0.06, schedule="cosine",
                          batch_size=16, grad_accum=4, max_length=256, max_grad_norm=None, precision="bf16",
                          device="cuda:1", seed=1234, group_by_length=False, eval_steps=50, save_steps=100,
                          keep_checkpoints=3, metric="accuracy", patience=5, log_steps=7, eval_batch_size=64,
                          num_workers=2),
        run=RunPaths(data="data/train.csv", dev="data/dev.csv", test=None, output="runs/x"),
    )


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_round_trip(tmp_path, suffix):
    config = _custom_run_config()
    path = tmp_path / f"config{suffix}"
    config.save(path)
    loaded = RunConfig.load(path)
    assert loaded == config
    assert loaded != RunConfig()  # the comparison would notice a lost field
    assert loaded.train.lr == 3e-5 and isinstance(loaded.train.lr, float)


def test_yaml_is_readable_and_defaults_round_trip(tmp_path):
    RunConfig().save(tmp_path / "c.yaml")
    raw = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert list(raw) == ["run", "data", "model", "train"]
    assert RunConfig.load(tmp_path / "c.yaml") == RunConfig()


def test_partial_file_fills_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1.0e-4\n  epochs: 5\nmodel:\n  pooling: mean\n")
    config = RunConfig.load(tmp_path / "c.yaml")
    assert config.train.lr == 1e-4 and config.train.epochs == 5 and config.model.pooling == "mean"
    assert config.data == DataConfig() and config.train.batch_size == TrainConfig().batch_size


def test_yaml_number_written_without_dot_names_the_field(tmp_path):
    # YAML 1.1 reads 5e-5 (no dot) as a string: the error must point at train.lr, not at a Python comparison.
    (tmp_path / "c.yaml").write_text("train:\n  lr: 5e-5\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        RunConfig.load(tmp_path / "c.yaml")


def test_unknown_keys_are_rejected_naming_them(tmp_path):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"train": {"lr": 1e-4, "learning_rate": 1e-4}})
    assert "learning_rate" in str(info.value) and "train" in str(info.value)
    assert "'lr'" in str(info.value)  # the valid fields are listed
    with pytest.raises(ConfigError, match="trainer"):
        RunConfig.from_dict({"trainer": {"lr": 1e-4}})
    (tmp_path / "c.json").write_text('{"model": {"pooling": "mean", "polling": "cls"}}')
    with pytest.raises(ConfigError) as info:
        RunConfig.load(tmp_path / "c.json")
    assert "polling" in str(info.value) and str(tmp_path / "c.json") in str(info.value)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_mapping(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        RunConfig.load(tmp_path / "broken.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.load(tmp_path / "list.json")
    (tmp_path / "flat.yaml").write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train"):
        RunConfig.load(tmp_path / "flat.yaml")


@pytest.mark.parametrize("klass", [DataConfig, ModelConfig, TrainConfig, RunPaths])
def test_field_docs_document_every_field(klass):
    docs = field_docs(klass)
    assert set(docs) == {f.name for f in dataclasses.fields(klass)}
    for name, text in docs.items():
        assert len(text) > 10 and not text.startswith("#"), name
