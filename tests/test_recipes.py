"""The automatic recipe: its choices for a table of data shapes, explicit settings winning, and end to end."""

from __future__ import annotations

import pytest
import yaml

from textclf import ModelConfig, TrainConfig
from textclf.train.recipes import DataShape, choose, describe, explicit_fields


def shape(rows_per_class: int, classes: int = 4, **kw) -> DataShape:
    fields = {"rows": rows_per_class * classes, "classes": classes, "min_rows_per_class": rows_per_class,
              "median_rows_per_class": rows_per_class, "sentence_encoder": True}
    return DataShape(**{**fields, **kw})


# (shape, recipe, epochs, lr, batch_size, freeze_layers_below, max_length)
CHOICES = [
    # a sentence encoder and few rows per class: contrastive few-shot, one epoch of pairs
    (shape(8), "few-shot", 1, 2e-5, 16, None, 64),
    (shape(64, classes=2), "few-shot", 1, 2e-5, 16, None, 64),
    # a class labelled once still pairs (with itself under other dropout): a first round of labels is often like this
    (shape(8, min_rows_per_class=1), "few-shot", 1, 2e-5, 16, None, 64),
    # more rows per class: fine-tuning for at least 300 steps, MiniLM's learning rate
    (shape(65, classes=2), "fine-tune", 20, 1e-4, 16, None, 64),
    (shape(500, classes=6), "fine-tune", 4, 1e-4, 32, None, 64),
    (shape(20_000, classes=2), "fine-tune", 2, 1e-4, 32, None, 64),
    (shape(100_000, classes=2), "fine-tune", 1, 1e-4, 32, None, 64),
    # no sentence pooling (a plain BERT): fine-tuning, the lower half frozen when a class has few rows
    (shape(8, sentence_encoder=False, hidden_size=768, num_layers=12), "fine-tune", 20, 3e-5, 16, 6, 64),
    (shape(100, sentence_encoder=False, hidden_size=768, num_layers=12), "fine-tune", 12, 3e-5, 16, None, 64),
    (shape(100, sentence_encoder=False, hidden_size=1024, num_layers=24), "fine-tune", 12, 2e-5, 16, None, 64),
    # multi-label: few-shot cannot pair its rows
    (shape(8, multi_label=True), "fine-tune", 20, 1e-4, 16, 3, 64),
    # max_length follows the 95th-percentile text, in multiples of 8, within 16..256 and the encoder's limit
    (shape(8, length_quantile=37), "few-shot", 1, 2e-5, 16, None, 40),
    (shape(8, length_quantile=5), "few-shot", 1, 2e-5, 16, None, 16),
    (shape(8, length_quantile=900), "few-shot", 1, 2e-5, 16, None, 256),
    (shape(8, length_quantile=300, position_limit=128), "few-shot", 1, 2e-5, 16, None, 128),
]


@pytest.mark.parametrize("data_shape, recipe, epochs, lr, batch_size, frozen, max_length", CHOICES)
def test_choices_for_data_shapes(data_shape, recipe, epochs, lr, batch_size, frozen, max_length):
    chosen = choose(data_shape, TrainConfig(recipe="auto"), ModelConfig())
    got = chosen.train
    assert (got.recipe, got.epochs, got.lr, got.batch_size, chosen.model.freeze_layers_below, got.max_length) == (
        recipe, epochs, lr, batch_size, frozen, max_length)
    assert got.warmup_ratio == 0.1
    assert chosen.reason.startswith(f"recipe auto: {recipe}") and "\n" not in chosen.reason


def test_windows_keep_fine_tuning():
    chosen = choose(shape(8), TrainConfig(recipe="auto", long_texts="windows"), ModelConfig())
    assert chosen.train.recipe == "fine-tune"


def test_explicit_settings_win():
    # Python: fields away from their defaults were set by the user
    chosen = choose(shape(8), TrainConfig(recipe="auto", lr=7e-5, max_length=96), ModelConfig())
    assert (chosen.train.recipe, chosen.train.lr, chosen.train.max_length, chosen.train.epochs) == (
        "few-shot", 7e-5, 96, 1)
    assert "kept your lr, max_length" in chosen.reason
    # the command line: a flag given at its default value is explicit too
    chosen = choose(shape(8, sentence_encoder=False), TrainConfig(recipe="auto"), ModelConfig(),
                    explicit_train={"epochs"}, explicit_model={"freeze_layers_below"})
    assert (chosen.train.epochs, chosen.model.freeze_layers_below) == (3, None)


def test_explicit_fields_are_the_fields_given():
    import dataclasses

    from textclf.config import RunConfig, replaced

    assert explicit_fields(TrainConfig(recipe="fine-tune", lr=1e-3)) == {"recipe", "lr"}
    assert explicit_fields(TrainConfig(lr=1e-3)) == {"lr"}
    assert explicit_fields(TrainConfig(epochs=3)) == {"epochs"}  # the default value, but given
    assert explicit_fields(ModelConfig()) == set()
    assert explicit_fields(RunConfig.from_dict({"train": {"epochs": 3}}).train) == {"epochs"}  # a config file
    assert explicit_fields(replaced(TrainConfig(epochs=3), seed=1)) == {"epochs", "seed"}
    # dataclasses.replace hands the constructor every field: then only what differs from the default counts
    assert explicit_fields(dataclasses.replace(TrainConfig(epochs=3), lr=1e-3)) == {"lr"}


class _Tokenizer:
    """Whitespace tokens; "?" is unknown."""

    unk_token_id = 0

    def __call__(self, texts, add_special_tokens=True, truncation=False):
        return {"input_ids": [[101] + [0 if w == "?" else 5 for w in t.split()] + [102] for t in texts]}


class _EncoderConfig:
    hidden_size, num_hidden_layers, max_position_embeddings, model_type = 384, 6, 512, "bert"


def test_describe_measures_rows_lengths_script_and_vocabulary():
    texts = ["a b c"] * 18 + ["a " * 40] * 2 + ["? ? 中文"]
    labels = ["x"] * 10 + ["y"] * 11
    got = describe(texts, labels, False, _Tokenizer(), _EncoderConfig(), True)
    assert (got.rows, got.classes, got.min_rows_per_class, got.median_rows_per_class) == (21, 2, 10, 10.5)
    assert got.length_quantile == 42 and got.language == "en" and got.sentence_encoder
    assert got.unknown_share == pytest.approx(2 / (18 * 5 + 2 * 42 + 5))
    chinese = describe(["这是一个中文句子"] * 4, [["a", "b"], ["a"], ["b"], ["a"]], True, _Tokenizer(),
                       _EncoderConfig(), False)
    assert chinese.language == "zh" and chinese.multi_label and (chinese.min_rows_per_class, chinese.classes) == (2, 2)
    # an unlabelled pool counts for lengths (templated sentences are shorter than the texts read), not for rows
    pooled = describe(["a b"] * 4, ["x", "x", "y", "y"], False, _Tokenizer(), _EncoderConfig(), True,
                      pool=["a " * 30] * 20)
    assert (pooled.rows, pooled.length_quantile) == (4, 32)


@pytest.mark.parametrize("recipe", ["fine-tune", "auto"])
def test_an_encoder_that_cannot_read_the_data_is_said_before_training_whatever_the_recipe(
        recipe, tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    # The tiny model has minilm's English vocabulary: it reads two thirds of the Chinese headlines' tokens as [UNK].
    from textclf.cli import main

    code = main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output",
                 str(tmp_path / "run"), "--recipe", recipe, "--max-steps", "1", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    warning = next(line for line in out.splitlines() if "unknown to the vocabulary" in line)
    assert "67% of the training tokens" in warning and "Chinese encoder" in warning
    assert "textclf pretrain" in warning and "--baseline" in warning
    assert out.index(warning) < out.index("training on cpu")  # before training starts


def test_a_readable_vocabulary_says_nothing():
    from transformers import AutoTokenizer

    from textclf.model.classifier import resolve_model_name
    from textclf.train.recipes import unreadable_warning

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name("minilm"))
    assert unreadable_warning(["what is the capital of china?", "who wrote hamlet?"], tokenizer, "minilm") is None
    assert "this language" in unreadable_warning(["สวัสดีครับ ข่าววันนี้"], tokenizer, "minilm")


def test_auto_end_to_end_from_the_command_line(tiny_sentence_encoder, tmp_path, capsys):
    """`textclf train --recipe auto` picks few-shot for a sentence encoder with 6 rows per class, keeps the flags
    given (even at their default values), prints one line and writes the choice to config.yaml."""
    from textclf.cli import main

    rows = ["text,label"] + [f"good movie number {i},pos" for i in range(6)] + \
        [f"bad awful film {i},neg" for i in range(6)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "train.csv"), "--model", str(tiny_sentence_encoder),
                 "--output", str(out), "--recipe", "auto", "--batch-size", "32", "--device", "cpu", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("recipe auto:")]
    assert len(lines) == 1 and "few-shot" in lines[0] and "kept your batch_size" in lines[0]
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["train"]
    assert (saved["recipe"], saved["epochs"], saved["lr"], saved["batch_size"]) == ("few-shot", 1, 2e-5, 32)
    assert (out / "best" / "config.json").is_file()


def test_auto_from_python_keeps_non_defaults(tiny_model_dir, tmp_path):
    """A plain encoder (no sentence pooling) with 6 rows per class: fine-tuning, the lower half frozen; the Trainer
    keeps the epochs given."""
    import textclf

    texts = [f"good movie {i}" for i in range(6)] + [f"bad film {i}" for i in range(6)]
    labels = ["pos"] * 6 + ["neg"] * 6
    trainer = textclf.Trainer(str(tiny_model_dir), {"text": texts, "label": labels}, tmp_path / "run",
                              TrainConfig(recipe="auto", epochs=2, device="cpu"), progress=False)
    assert trainer.config.recipe == "fine-tune" and trainer.config.epochs == 2 and trainer.config.lr == 1e-4
    assert trainer.model_config.freeze_layers_below == trainer.model.encoder.config.num_hidden_layers // 2
    assert trainer.recipe_reason.startswith("recipe auto: fine-tune")


def test_a_recipe_given_explicitly_is_kept_and_scaled_for():
    """textclf tune --recipe fine-tune on a sentence encoder with few rows: fine-tuning settings, not few-shot's."""
    chosen = choose(shape(8), TrainConfig(recipe="fine-tune"), ModelConfig(), explicit_train={"recipe"})
    assert (chosen.train.recipe, chosen.train.epochs, chosen.train.lr, chosen.model.freeze_layers_below) == (
        "fine-tune", 20, 1e-4, 3)
    assert "fine-tuning as given" in chosen.reason and "about 40 optimizer steps" in chosen.reason
    forced = choose(shape(500, sentence_encoder=True), TrainConfig(recipe="few-shot"), ModelConfig(),
                    explicit_train={"recipe"})
    assert (forced.train.recipe, forced.train.epochs) == ("few-shot", 1) and "few-shot as given" in forced.reason


def test_the_step_count_follows_the_settings_kept():
    chosen = choose(shape(100, sentence_encoder=False), TrainConfig(recipe="auto", batch_size=8, grad_accum=2),
                    ModelConfig())
    assert "about 300 optimizer steps" in chosen.reason  # 12 epochs x ceil(50 batches / 2)


def test_a_recipe_given_is_run_as_given():
    from textclf.train.recipes import recipe_for_trainer

    said = []
    train, model = TrainConfig(recipe="few-shot", lr=3e-5), ModelConfig()
    recipe = recipe_for_trainer(None, None, "minilm", model, train, said.append)  # nothing measured, nothing said
    assert (recipe.train, recipe.model, recipe.reason, said) == (train, model, None, [])


def test_the_command_line_the_trainer_and_tune_resolve_the_default_recipe_alike(tiny_model_dir, tiny_data_dir,
                                                                               tmp_path):
    """No recipe flag: auto is the default on all three entry points, and each keeps the settings given (lr,
    batch size) and fills in the rest identically."""
    import yaml

    import textclf
    from textclf.cli import main
    from textclf.tools.tune import _Search

    # epochs 3 is the default value, given on purpose: given is given, whether or not it equals the default
    given = {"lr": 3e-4, "batch_size": 8, "epochs": 3, "max_steps": 1, "device": "cpu", "precision": "fp32"}
    assert main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output",
                 str(tmp_path / "cli"), "--lr", "3e-4", "--batch-size", "8", "--epochs", "3", "--max-steps", "1",
                 "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    from_cli = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["train"]

    data = textclf.load_dataset(str(tiny_data_dir))
    trainer = textclf.Trainer(str(tiny_model_dir), data, tmp_path / "api", TrainConfig(**given), progress=False)
    search = _Search(data, tmp_path / "tune", ModelConfig(name=str(tiny_model_dir)), TrainConfig(**given), None,
                     explicit_fields(TrainConfig(**given)), set(), 3, None, None)
    fields = ("recipe", "epochs", "lr", "batch_size", "max_length", "warmup_ratio", "max_steps")
    resolved = [{f: from_cli[f] for f in fields}, {f: getattr(trainer.config, f) for f in fields},
                {f: getattr(search.base_train, f) for f in fields}]
    assert resolved[0] == resolved[1] == resolved[2], resolved
    assert resolved[0]["recipe"] == "fine-tune" and resolved[0]["lr"] == 3e-4 and resolved[0]["batch_size"] == 8
    assert resolved[0]["epochs"] == 3
    assert resolved[0]["max_length"] != TrainConfig().max_length  # filled in by auto, not the plain default


def test_a_run_started_before_auto_was_the_default_resumes_with_its_own_settings(tiny_model_dir, tiny_data_dir,
                                                                                 tmp_path, capsys):
    # A run of the plain recipe (what every run was before auto became the default), resumed by the command it
    # printed (no --recipe): it goes on with its saved settings instead of choosing new ones and being refused.
    from textclf.cli import main

    base = ["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(tmp_path / "run"),
            "--device", "cpu", "--precision", "fp32", "--quiet"]
    assert main(base + ["--recipe", "fine-tune", "--max-steps", "2", "--save-steps", "1"]) == 0
    capsys.readouterr()
    code = main(base + ["--max-steps", "3", "--resume", "auto"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "resuming from" in out and "recipe auto" not in out


def test_a_trained_model_trains_on_with_its_settings_never_rechosen(tiny_model_dir, tiny_data_dir, tmp_path):
    import textclf

    textclf.Trainer(str(tiny_model_dir), str(tiny_data_dir), tmp_path / "run", progress=False,
                    config=TrainConfig(max_steps=1, device="cpu", precision="fp32")).fit()
    again = textclf.Trainer.from_pretrained(tmp_path / "run" / "best", data=textclf.load_dataset(str(tiny_data_dir)),
                                            device="cpu")
    assert again.config.recipe == "fine-tune" and again.recipe_reason is None


def test_every_recipe_but_auto_is_an_objective_that_declares_itself():
    from textclf.config import RECIPES
    from textclf.train.objectives import OBJECTIVES, Classification, ContrastivePairs

    assert sorted(OBJECTIVES) == sorted(r for r in RECIPES if r != "auto")
    assert [name for name, cls in OBJECTIVES.items() if cls.searched] == ["fine-tune", "few-shot"]  # tune's choices
    fits, train = shape(10), TrainConfig()
    windows = TrainConfig(long_texts="windows")
    assert ContrastivePairs.refusal(fits, train) is None and Classification.refusal(fits, train) is None
    refused = [("sentence", shape(10, sentence_encoder=False), train),
               ("one label", shape(10, multi_label=True), train),
               ("2 classes", shape(10, classes=1), train), ("truncated", fits, windows)]
    for words, case, config in refused:
        reason = ContrastivePairs.refusal(case, config)
        assert reason is not None and words in reason
        # the automatic recipe never picks an objective that refuses the data
        assert choose(case, config, ModelConfig()).train.recipe == "fine-tune"
    assert choose(fits, train, ModelConfig()).train.recipe == "few-shot"
