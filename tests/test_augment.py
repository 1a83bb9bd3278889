"""Training-set augmentation: each operation, seeding, training split only, errors naming the file."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from textclf.config import DataConfig
from textclf.data.augment import Augmenter, augment_dataset, augment_split, read_entities, read_synonym_groups
from textclf.data.readers import Split
from textclf.errors import DataError


def test_synonym_groups_work_in_both_directions(tmp_path):
    table = tmp_path / "syn.csv"
    table.write_text("word,synonym\nheart attack,myocardial infarction\nmyocardial infarction,MI\n", encoding="utf-8")
    groups = read_synonym_groups(table)
    assert groups["MI"] == ["heart attack", "myocardial infarction"]
    augmenter = Augmenter(["synonym"], prob=1.0, synonyms=groups)
    rng = random.Random(0)
    outputs = {augmenter.augment("he had a heart attack", rng) for _ in range(20)}
    assert outputs == {"he had a myocardial infarction", "he had a MI"}
    assert {augmenter.augment("MI twice", rng) for _ in range(20)} == {"heart attack twice",
                                                                      "myocardial infarction twice"}
    assert augmenter.augment("nothing listed", rng) == "nothing listed"


def test_entity_replacement_keeps_the_type(tmp_path):
    path = tmp_path / "entities.json"
    path.write_text('{"city": ["Beijing", "Shanghai", "Paris"], "person": ["Alice"]}', encoding="utf-8")
    augmenter = Augmenter(["entity"], prob=1.0, entities=read_entities(path))
    rng = random.Random(1)
    outputs = {augmenter.augment("flights from Beijing to Paris for Alice", rng) for _ in range(30)}
    assert all(o.endswith("for Alice") for o in outputs)  # Alice has no other value of her type
    assert "flights from Shanghai to Beijing for Alice" in outputs or "flights from Paris to Shanghai for Alice" in \
        outputs
    csv_path = tmp_path / "entities.csv"
    csv_path.write_text("type,value\ncity,Beijing\ncity,Shanghai\nperson,Beijing\n", encoding="utf-8")
    with pytest.raises(DataError, match="'Beijing' is listed under both"):
        read_entities(csv_path)


def test_delete_and_swap_are_character_level_for_chinese_and_word_level_for_english():
    rng = random.Random(3)
    swap = Augmenter(["swap"], prob=0.3)
    text = "今天天气很好我们去公园"
    swapped = swap.augment(text, rng)
    assert swapped != text and Counter(swapped) == Counter(text)
    english = "what is the capital city of france"
    words = swap.augment(english, rng).split(" ")
    assert sorted(words) == sorted(english.split(" "))
    delete = Augmenter(["delete"], prob=0.5)
    shorter = delete.augment(english, rng).split(" ")
    assert 1 <= len(shorter) < 7 and all(w in english.split(" ") for w in shorter)
    assert delete.augment("one", rng) == "one"  # a single token is never deleted


def test_augmentation_is_seeded_and_touches_only_the_training_split(tiny_data):
    config = DataConfig(augment="delete,swap", augment_copies=2, augment_prob=0.2)
    first = augment_dataset(tiny_data, config, seed=7, log=lambda *_: None)
    again = augment_dataset(tiny_data, config, seed=7, log=lambda *_: None)
    other = augment_dataset(tiny_data, config, seed=8, log=lambda *_: None)
    assert first.train.texts == again.train.texts and first.train.texts != other.train.texts
    assert first.dev is tiny_data.dev and first.test is tiny_data.test
    n = len(tiny_data.train)
    assert first.train.texts[:n] == tiny_data.train.texts and 300 < len(first.train) <= 3 * n
    assert len(set(first.train.texts)) == len(first.train)  # copies equal to an existing text are dropped
    # Every copy keeps the label and the source line of the row it came from.
    line_to_row = {loc: i for i, loc in enumerate(tiny_data.train.locations)}
    for text, label, loc in zip(first.train.texts[n:], first.train.labels[n:], first.train.locations[n:]):
        assert label == tiny_data.train.labels[line_to_row[loc]] and text != tiny_data.train.texts[line_to_row[loc]]
    assert augment_dataset(tiny_data, DataConfig(), seed=7) is tiny_data  # off by default


def test_copies_of_positional_rows_point_back_to_their_row():
    split = Split("train", ["a b c d e f", "g h i j k l"], ["x", "y"], "<list>")
    augmented, added = augment_split(split, Augmenter(["swap"], prob=0.2), copies=3, seed=0)
    assert added >= 4 and len(augmented) == 2 + added and augmented.locations[:2] == [0, 1]
    for text, label, origin in zip(augmented.texts[2:], augmented.labels[2:], augmented.locations[2:]):
        assert sorted(text.split()) == sorted(split.texts[origin].split()) and label == split.labels[origin]


def test_trainer_augments_train_only(tiny_model_dir, tiny_data):
    import textclf
    from textclf.config import TrainConfig

    trainer = textclf.Trainer(str(tiny_model_dir), tiny_data, "unused", TrainConfig(max_length=32, device="cpu"),
                              data_config=DataConfig(augment="swap"), progress=False)
    assert len(trainer.train_dataset) > len(tiny_data.train) and len(trainer.dev_dataset) == len(tiny_data.dev)
    assert trainer.data.test is tiny_data.test
