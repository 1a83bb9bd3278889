"""The label audit finds injected label noise, duplicates across splits and conflicting labels."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

import textclf
from textclf import cli
from textclf.data.readers import DatasetSplits, Split
from textclf.errors import ConfigError
from textclf.tools.audit import audit, normalize_text

TREC = Path(__file__).resolve().parent.parent / "examples" / "data" / "trec"


def noisy_trec(rows: int = 1000, share: float = 0.05, seed: int = 0):
    """The first ``rows`` TREC training questions with ``share`` of the labels changed to another class."""
    data = textclf.load_dataset(TREC)
    data.train = data.train.subset(range(rows))
    rng = random.Random(seed)
    injected = sorted(rng.sample(range(rows), int(share * rows)))
    labels = list(data.train.labels)
    for i in injected:
        labels[i] = rng.choice([name for name in data.label_map.names if name != labels[i]])
    data.train.labels = labels
    return data, set(injected)


def test_finds_most_injected_label_noise():
    data, injected = noisy_trec()
    result = audit(data, folds=5, splits=("train",), near_threshold=None)
    flagged = result.flagged("train")
    found = len(flagged & injected)
    # measured: recall 0.66, precision 0.20 (4x the 5% base rate), top-50 precision 0.40 on these 1000 rows
    assert found / len(injected) >= 0.5
    assert found / len(flagged) >= 0.12
    assert len(set(result.top(len(injected))) & injected) / len(injected) >= 0.25
    # every flag suggests another label that the out-of-fold model prefers over the given one
    for row in result.rows:
        if "label_issue" in row.reasons:
            assert row.suggested_label != row.given_label and row.p_suggested > row.p_given
            assert row.score == pytest.approx(row.p_suggested - row.p_given)
    scores = [row.score for row in result.rows if row.is_label_problem]
    assert scores == sorted(scores, reverse=True)  # ranked by suspicion
    assert set(result.thresholds) == set(data.label_map.names)
    assert result.probabilities["train"].shape == (1000, 6)


def test_thresholds_are_mean_self_confidence():
    data, _ = noisy_trec(300)
    result = audit(data, folds=3, splits=("train",), near_threshold=None)
    p = result.probabilities["train"]
    names = data.label_map.names
    for j, name in enumerate(names):
        mine = [i for i, y in enumerate(data.train.labels) if y == name]
        assert result.thresholds[name] == pytest.approx(p[mine, j].mean())


def test_duplicates_and_conflicts(tiny_data):
    train, dev, test = tiny_data.train, tiny_data.dev, tiny_data.test
    t0, t1, t2, t3 = train.texts[0], train.texts[1], train.texts[2], train.texts[3]
    dev_texts = list(dev.texts) + ["".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t1) + "！"]
    test_texts = list(test.texts) + [t0, t2[:-1] + "啊" if len(t2) > 12 else t2 + "啊啊"]
    train_texts = list(train.texts) + [t3]
    other = next(n for n in tiny_data.label_map.names if n != train.labels[3])
    data = DatasetSplits(
        train=Split("train", train_texts, list(train.labels) + [other], "train.csv",
                    list(train.locations) + [999], "line"),
        dev=Split("dev", dev_texts, list(dev.labels) + [train.labels[1]], "dev.csv", list(dev.locations) + [77],
                  "line"),
        test=Split("test", test_texts, list(test.labels) + [train.labels[0], train.labels[2]], "test.csv",
                   list(test.locations) + [88, 89], "line"),
        label_map=tiny_data.label_map)
    result = audit(data, folds=3, near_threshold=0.8)
    by_place = {(r.split, r.line): r for r in result.rows}
    assert "cross_split_duplicate" in by_place[("test", 88)].reasons  # exact copy of train row 0
    assert f"train line {train.locations[0]}" in by_place[("test", 88)].related[0]
    assert "near_duplicate" in by_place[("dev", 77)].reasons  # full-width copy: equal after normalisation
    assert "near_duplicate" in by_place[("test", 89)].reasons  # one character changed: high cosine
    assert by_place[("test", 89)].similarity >= 0.8
    for line in (train.locations[3], 999):  # the same text with two labels in train
        assert "conflicting_labels" in by_place[("train", line)].reasons
    assert ("train", train.locations[0]) not in by_place or \
        "cross_split_duplicate" not in by_place[("train", train.locations[0])].reasons  # the later copy is reported
    conflict_rank = min(i for i, r in enumerate(result.rows) if "conflicting_labels" in r.reasons)
    duplicate_rank = min(i for i, r in enumerate(result.rows) if r.reasons == ["cross_split_duplicate"])
    assert conflict_rank < duplicate_rank


def test_normalize_text_folds_width_case_punctuation():
    assert normalize_text("Ｈｅｌｌｏ， World！") == normalize_text("hello world") == "helloworld"
    assert normalize_text("北京 欢迎你。") == "北京欢迎你"
    assert normalize_text("?!") == "?!"  # nothing but punctuation: kept, not emptied


def test_bad_arguments_name_the_field(tiny_data):
    with pytest.raises(ConfigError, match="audit.method"):
        audit(tiny_data, method="bert")
    with pytest.raises(ConfigError, match="audit.folds"):
        audit(tiny_data, folds=1)
    with pytest.raises(ConfigError, match="audit.splits"):
        audit(tiny_data, splits=("validation",))


def test_multi_label_audit_flags_removed_labels(tiny_data):
    money = {"finance", "stocks", "realty"}
    labels = [[y, "money"] if y in money else [y] for y in tiny_data.train.labels]
    dropped = [i for i, y in enumerate(tiny_data.train.labels) if y in money][::6]
    for i in dropped:
        labels[i] = [tiny_data.train.labels[i]]
    train = Split("train", tiny_data.train.texts, labels, "train.csv", tiny_data.train.locations, "line")
    data = DatasetSplits(train, None, None, textclf.LabelMap.from_labels(labels, multi_label=True))
    result = audit(data, folds=4, near_threshold=None)
    flagged = result.flagged("train")
    assert len(flagged & set(dropped)) >= len(dropped) // 2
    suggested = {r.index: r.suggested_label for r in result.rows if "label_issue" in r.reasons}
    assert any("money" in suggested[i] for i in flagged & set(dropped))


def test_cli_audit_writes_ranked_csv(tiny_data_dir, tmp_path, capsys):
    assert cli.main(["audit", "--data", str(tiny_data_dir), "--output", str(tmp_path), "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "audited 300 rows" in out
    with open(tmp_path / "audit.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0]) == ["rank", "split", "line", "text", "given_label", "suggested_label", "p_given",
                                      "p_suggested", "score", "reason", "related"]
    label_rows = [r for r in rows if "label_issue" in r["reason"]]
    assert [float(r["score"]) for r in label_rows] == sorted((float(r["score"]) for r in label_rows), reverse=True)
    assert (tmp_path / "audit.json").is_file()
    assert np.all([r["split"] in ("train", "dev", "test") for r in rows])
    assert cli.main(["audit", "--data", str(tiny_data_dir), "--folds", "1"]) == 2


def test_cli_audit_says_how_far_it_is(tiny_data_dir, capsys):
    """Each stage and each fold is a line on stderr, so a long audit is never silent; stdout keeps the results."""
    assert cli.main(["audit", "--data", str(tiny_data_dir), "--folds", "3", "--top", "1"]) == 0
    printed = capsys.readouterr()
    progress = [line for line in printed.err.splitlines() if line.startswith("textclf audit: ")]
    folds = [line.split(": ")[1] for line in progress if line.startswith("textclf audit: fold ")]
    assert folds == ["fold 1/3", "fold 2/3", "fold 3/3"]
    assert any("near duplicates" in line for line in progress) and "fold 1/3" not in printed.out
