"""Tests for textclf.data.labels: building, encoding, persistence and validation of the label map."""

import json
import math

import numpy as np
import pytest

from textclf.data.labels import LABELS_FILE, LabelMap, canonical_label
from textclf.errors import DataError


def test_from_labels_sorts_unique_names():
    lm = LabelMap.from_labels(["pos", "neg", "pos", "neutral"])
    assert lm.names == ["neg", "neutral", "pos"]
    assert len(lm) == 3
    assert not lm.multi_label


@pytest.mark.parametrize("labels", [[10, 2, 1, 2], ["10", "2", "1"], [np.int64(10), 2.0, 1]])
def test_integer_labels_sort_numerically_and_are_stored_as_strings(labels):
    lm = LabelMap.from_labels(labels)
    assert lm.names == ["1", "2", "10"]
    assert lm.encode(10) == lm.encode("10") == 2
    assert 2 in lm and "2" in lm and 3 not in lm


def test_encode_decode_round_trip():
    lm = LabelMap(["a", "b", "c"])
    assert lm.encode_many(["c", "a"]) == [2, 0]
    assert lm.decode(1) == "b"
    assert lm.decode_many(np.array([2, 0])) == ["c", "a"]
    assert lm.id2label == {0: "a", 1: "b", 2: "c"}
    assert lm.label2id == {"a": 0, "b": 1, "c": 2}
    with pytest.raises(DataError, match=r"unknown label 'd'; known labels: \['a', 'b', 'c'\]"):
        lm.encode("d")
    with pytest.raises(IndexError):
        lm.decode(3)


def test_equality_and_multi_label_flag():
    assert LabelMap(["a", "b"]) == LabelMap(["a", "b"])
    assert LabelMap(["a", "b"]) != LabelMap(["b", "a"])
    assert LabelMap(["a", "b"]) != LabelMap(["a", "b"], multi_label=True)


def test_multi_label_from_lists_and_multi_hot():
    lm = LabelMap.from_labels([["joy", "love"], ["anger"], ["joy"]], multi_label=True)
    assert lm.names == ["anger", "joy", "love"] and lm.multi_label
    hot = lm.encode_multi_hot([["love", "joy"], ["anger"], []])
    assert hot.dtype == np.float32 and hot.shape == (3, 3)
    np.testing.assert_array_equal(hot, [[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    with pytest.raises(DataError, match="list of labels"):
        LabelMap.from_labels(["joy"], multi_label=True)


def test_dict_and_file_round_trip(tmp_path):
    lm = LabelMap(["财经", "体育"], multi_label=True)
    assert LabelMap.from_dict(lm.to_dict()) == lm
    written = lm.save(tmp_path / "model")  # a folder: labels.json goes inside
    assert written == tmp_path / "model" / LABELS_FILE
    assert LabelMap.load(tmp_path / "model") == lm
    assert LabelMap.load(written) == lm
    assert "财经" in written.read_text(encoding="utf-8")  # readable, not \u-escaped
    lm.save(tmp_path / "custom.json")
    assert LabelMap.load(tmp_path / "custom.json") == lm


def test_from_dict_accepts_hf_id2label():
    assert LabelMap.from_dict({"id2label": {"1": "pos", "0": "neg"}}).names == ["neg", "pos"]


@pytest.mark.parametrize(
    "content, pattern",
    [
        ('{"names": ["a", "b"', r"labels\.json: damaged label file"),
        ('["a", "b"]', r"labels\.json: expected a JSON object"),
        ('{"labels": ["a"]}', r"labels\.json: missing the 'names' list"),
        ('{"names": ["a", "a"]}', r"labels\.json: label names must be unique"),
        ('{"names": [1, 2]}', r"labels\.json: 'names' must be a list of strings"),
    ],
)
def test_load_damaged_file(tmp_path, content, pattern):
    (tmp_path / LABELS_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        LabelMap.load(tmp_path)


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"labels\.json: label file not found"):
        LabelMap.load(tmp_path)


def test_mixed_numeric_and_named_labels_name_examples():
    with pytest.raises(DataError, match=r"mix integers \('0', '1'\) with names \('neg', 'pos'\)"):
        LabelMap.from_labels(["pos", 0, "neg", "1"])


@pytest.mark.parametrize(
    "bad, pattern",
    [(None, "missing"), (math.nan, "missing"), ("", "missing"), ("  ", "missing"), (True, "boolean"),
     (np.bool_(False), "boolean"), (1.5, "non-integer"), (object(), "type object")],
)
def test_unusable_labels(bad, pattern):
    with pytest.raises(DataError, match=pattern):
        LabelMap.from_labels(["a", bad])
    with pytest.raises(DataError, match=pattern):
        canonical_label(bad)


def test_check_known_names_label_split_file_and_known_labels():
    lm = LabelMap(["neg", "pos"])
    lm.check_known(["pos", "neg"], "dev", "dev.csv")
    with pytest.raises(DataError) as info:
        lm.check_known(["pos", "neutral", "meh", "neutral"], "dev", "data/dev.csv", where=lambda i: f"line {i + 2}")
    message = str(info.value)
    for part in ["data/dev.csv", "dev split", "'neutral'", "'meh'", "'neutral': line 3", "['neg', 'pos']"]:
        assert part in message


def test_check_known_multi_label():
    lm = LabelMap(["a", "b"], multi_label=True)
    lm.check_known([["a", "b"], ["b"]], "test", "t.csv")
    with pytest.raises(DataError, match="'c'"):
        lm.check_known([["a", "c"]], "test", "t.csv")


def test_save_is_plain_json(tmp_path):
    path = LabelMap(["x", "y"]).save(tmp_path)
    assert json.loads(path.read_text()) == {"names": ["x", "y"], "multi_label": False}
