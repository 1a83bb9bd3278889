"""Choosing rows to label: every strategy's contract, round 0, the label-names reader, the CSV round trip and the
command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from textclf import cli
from textclf.data.label_names import LabelNames, read_label_names
from textclf.errors import ConfigError, DataError, OutputDirError
from textclf.tools import strategies
from textclf.tools.select import select_rows


def _pool(n=200, classes=4, width=16, seed=0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, width)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    logits = rng.normal(size=(n, classes)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, embeddings


@pytest.mark.parametrize("name", sorted(strategies.STRATEGIES))
def test_every_strategy_keeps_the_contract(name):
    probabilities, embeddings = _pool()
    labelled = list(range(0, 200, 3))
    chosen = strategies.select(name, probabilities, embeddings, labelled, 25, seed=7)
    assert len(chosen) == 25 and len(set(chosen.tolist())) == 25  # the budget, no row twice
    assert not set(chosen.tolist()) & set(labelled)  # never a labelled row
    again = strategies.select(name, probabilities, embeddings, labelled, 25, seed=7)
    np.testing.assert_array_equal(chosen, again)  # deterministic for a seed
    # a budget above what is left returns what is left, each once
    rest = strategies.select(name, probabilities, embeddings, list(range(190)), 50, seed=1)
    assert sorted(rest.tolist()) == list(range(190, 200))


def test_uncertainty_picks_the_closest_calls_and_kcenter_spreads_out():
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.5, 0.5], [0.99, 0.01], [0.7, 0.3]])
    embeddings = np.eye(5, dtype=np.float32)
    assert strategies.select("margin", probabilities, embeddings, [], 2).tolist() == [2, 1]
    assert strategies.select("entropy", probabilities, embeddings, [], 2).tolist() == [2, 1]
    # Two tight clusters and a labelled row inside the first: k-centre goes to the other cluster first
    points = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    assert strategies.select("kcenter", np.full((4, 2), 0.5), points, [0], 1).tolist()[0] in (2, 3)
    # BADGE opens with the most uncertain row and draws uncertain rows more often than certain ones
    mixed = np.array([[0.99, 0.01]] * 3 + [[0.5, 0.5]] * 3)
    picks = np.concatenate([strategies.select("badge", mixed, np.eye(6, dtype=np.float32), [], 3, seed=s)
                            for s in range(50)])
    assert set(picks[::3].tolist()) <= {3, 4, 5}
    assert (picks >= 3).mean() > 0.65  # 0.5 if it ignored the uncertainty


def test_badge_draws_as_k_means_pp_over_the_explicit_gradient_embeddings():
    """The factored inner products pick what k-means++ over the [N, C x H] gradient embeddings picks."""
    probabilities, embeddings = _pool(300, classes=5, width=12, seed=3)
    residual = probabilities.copy()
    residual[np.arange(300), probabilities.argmax(1)] -= 1.0
    gradients = (residual[:, :, None] * embeddings[:, None, :]).reshape(300, -1).astype(np.float64)

    def reference(k, rng):  # textbook k-means++ seeding, the longest vector first
        norms = (gradients ** 2).sum(1)
        picks = [int(np.argmax(norms))]
        distance = ((gradients - gradients[picks[0]]) ** 2).sum(1)
        for _ in range(k - 1):
            pick = int(rng.choice(len(gradients), p=distance / distance.sum()))
            picks.append(pick)
            distance = np.minimum(distance, ((gradients - gradients[pick]) ** 2).sum(1))
            distance[pick] = 0.0
        return picks

    for seed in range(3):
        ours = strategies.select("badge", probabilities, embeddings, [], 20, seed=seed).tolist()
        assert ours == reference(20, np.random.default_rng(seed))


def test_typical_takes_the_heart_of_dense_clusters_not_outliers_and_skips_labelled_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32)
    dense = [centres[c] + 0.05 * rng.normal(size=(60, 8)) for c in (0, 1)]
    outliers = centres[2] + 0.6 * rng.normal(size=(4, 8))  # few and scattered
    points = np.concatenate(dense + [outliers]).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    flat = np.full((len(points), 2), 0.5)
    picks = strategies.select("typical", flat, points, [], 2, seed=0)
    assert sorted(p // 60 for p in picks.tolist()) == [0, 1]  # one from each dense cluster, no outlier
    for pick in picks.tolist():  # and near its cluster's centre
        cluster = points[pick // 60 * 60:(pick // 60 + 1) * 60]
        assert points[pick] @ cluster.mean(axis=0) >= np.quantile(cluster @ cluster.mean(axis=0), 0.75)
    # a labelled row in the first cluster: the next pick comes from the second
    assert strategies.select("typical", flat, points, [3], 1, seed=0).tolist()[0] // 60 == 1


def test_typicality_is_the_mean_similarity_to_the_nearest_other_points_also_when_the_cluster_is_subsampled():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(12, 4))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    points[1] = points[0]  # a duplicate text is a neighbour like any other

    def expected(reference: np.ndarray, n: int) -> np.ndarray:
        return np.array([np.sort([points[i] @ points[j] for j in reference if j != i])[-n:].mean()
                         for i in range(len(points))])

    whole = strategies._typicality(points, np.random.default_rng(0), neighbours=3)
    np.testing.assert_allclose(whole, expected(np.arange(12), 3), rtol=1e-6)
    assert whole[0] == whole.max()  # its duplicate is its nearest neighbour
    # over 5 of the 12 points: the points drawn are not their own neighbours, the others are compared with all 5
    drawn = np.random.default_rng(7).choice(12, 5, replace=False)
    sub = strategies._typicality(points, np.random.default_rng(7), neighbours=3, most=5)
    np.testing.assert_allclose(sub, expected(drawn, 3), rtol=1e-6)


def test_first_batch_opens_with_the_row_most_like_each_name_then_samples_the_pool():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32)
    rows = np.concatenate([centres[c] + 0.1 * rng.normal(size=(size, 8)) for c, size in enumerate((100, 30, 5))])
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    chosen = strategies.first_batch(rows, 9, seed=0, name_embeddings=centres)
    truth = np.repeat([0, 1, 2], (100, 30, 5))
    assert truth[chosen[:3]].tolist() == [0, 1, 2]  # the rare class too, in the names' order
    assert chosen[:3].tolist() == [int(np.argmax(rows @ c)) for c in centres]
    assert len(set(chosen.tolist())) == 9
    np.testing.assert_array_equal(chosen, strategies.first_batch(rows, 9, seed=0, name_embeddings=centres))
    assert strategies.first_batch(rows, 9, seed=1, name_embeddings=centres)[3:].tolist() != chosen[3:].tolist()
    without_names = strategies.first_batch(rows, 6, seed=0, labelled=[0, 1])
    assert len(set(without_names.tolist())) == 6 and not {0, 1} & set(without_names.tolist())
    assert len(strategies.first_batch(rows, 500, seed=0, name_embeddings=centres)) == len(rows)


def test_bad_strategy_and_budget_are_named():
    probabilities, embeddings = _pool(10)
    with pytest.raises(ConfigError, match="--strategy must be one of"):
        strategies.select("smart", probabilities, embeddings, [], 2)
    with pytest.raises(ConfigError, match="--budget"):
        strategies.select("margin", probabilities, embeddings, [], 0)


def test_label_names_reader(tmp_path):
    good = tmp_path / "labels.txt"
    good.write_text("\ufeff# the classes\n体育\t体育新闻：比赛、球队\n\nfinance\nsports\tgames and teams\n",
                    encoding="utf-8")
    names = read_label_names(good)
    assert names.names == ("体育", "finance", "sports")
    assert names.phrase(0) == "体育新闻：比赛、球队" and names.phrase(1) == "finance"
    cases = {"one.txt": ("only\n", "one label"), "empty.txt": ("\n# nothing\n", "no label"),
             "twice.txt": ("a\nb\nA\n", "line 3: the label 'A' is already named on line 1"),
             "tab.txt": ("a\n\tdescription only\n", "line 2: the label name is empty")}
    for file, (text, message) in cases.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            read_label_names(tmp_path / file)
    (tmp_path / "gbk.txt").write_bytes("体育\n财经\n".encode("gbk"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_label_names(tmp_path / "gbk.txt")
    with pytest.raises(DataError, match="no such file"):
        read_label_names(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="already named"):
        LabelNames.from_list(["x", "x"])


def test_selection_round_trip_through_training_files(tiny_model_dir, tiny_data_dir, tmp_path):
    pool = tiny_data_dir / "train.csv"
    cache = tmp_path / "cache"
    first = select_rows(str(tiny_model_dir), pool, 12, tmp_path / "round0.csv", cache_dir=cache,
                        label_names=LabelNames.from_list(["体育", "财经", "科技"]))
    with open(tmp_path / "round0.csv", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == first.texts and all(r["label"] == "" for r in rows)
    assert {r["guess"] for r in rows} <= {"体育", "财经", "科技"} and len({r["text"] for r in rows}) == 12
    assert list(cache.rglob("*.npz"))  # the pool's embeddings are kept for the next round

    # The annotator fills in the labels: the file trains as it is
    truth = dict(zip(*_texts_and_labels(pool)))
    with open(tmp_path / "round0.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "label": truth[r["text"]]} for r in rows)
    from textclf.data.readers import read_split

    labelled = read_split(tmp_path / "round0.csv", "train")  # as textclf train reads it: labels required
    assert sorted(labelled.texts) == sorted(first.texts) and set(labelled.labels) <= set(truth.values())

    # Next round: never a row already labelled, the same choice for the same seed
    second = select_rows(str(tiny_model_dir), pool, 12, None, labelled=[tmp_path / "round0.csv"], cache_dir=cache)
    assert not set(second.texts) & set(first.texts)
    third = select_rows(str(tiny_model_dir), pool, 12, None, labelled=[tmp_path / "round0.csv"], cache_dir=cache)
    assert third.texts == second.texts


def test_a_text_file_pool_and_a_pool_with_labels_read_as_texts(tiny_model_dir, tiny_data_dir, tmp_path):
    texts, _ = _texts_and_labels(tiny_data_dir / "train.csv")
    (tmp_path / "pool.txt").write_text("\n".join(texts[:30]) + "\n", encoding="utf-8")
    chosen = select_rows(str(tiny_model_dir), tmp_path / "pool.txt", 5, tmp_path / "out.csv")
    assert set(chosen.texts) <= set(texts[:30]) and all(isinstance(line, int) for line in chosen.pool_lines)
    with pytest.raises(OutputDirError, match="is the --pool file"):  # Python callers get the output rule too
        select_rows(str(tiny_model_dir), tmp_path / "pool.txt", 5, tmp_path / "pool.txt")


def _texts_and_labels(path):
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def test_select_with_a_trained_model_from_the_command_line(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(run),
                     "--recipe", "fine-tune", "--max-steps", "2", "--device", "cpu", "--precision", "fp32",
                     "--quiet"]) == 0
    out = tmp_path / "to_label.csv"
    args = ["select", "--model", str(run), "--pool", str(tiny_data_dir / "train.csv"), "--budget", "7", "--output",
            str(out), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(args + ["--strategy", "margin"]) == 0
    assert "wrote 7 rows to label" in capsys.readouterr().out
    with open(out, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 and all(0 < float(r["confidence"]) <= 1 for r in rows)
    confidence = [float(r["confidence"]) for r in rows]
    assert rows[0]["guess"] and all(r["pool_line"].isdigit() for r in rows) and len(confidence) == 7
    # the default strategy, and the output may not be the pool
    assert cli.main(args[:-4] + ["--output", str(tmp_path / "b.csv")]) == 0
    assert cli.main(args[:-4] + ["--output", str(tiny_data_dir / "train.csv")]) == 2
    assert "is the --pool file" in capsys.readouterr().err


def test_train_from_label_names_gives_an_ordinary_model_folder(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from textclf.data.readers import read_split

    test = read_split(tiny_data_dir / "test.csv", "test")
    names = sorted(set(test.labels))
    (tmp_path / "labels.txt").write_text("\n".join(f"{n}\t{n}新闻" for n in names) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    code = cli.main(["train", "--data", str(tiny_data_dir / "train.csv"), "--label-names",
                     str(tmp_path / "labels.txt"), "--test", str(tiny_data_dir / "test.csv"), "--model",
                     str(tiny_model_dir), "--output", str(run), "--max-steps", "2", "--device", "cpu",
                     "--precision", "fp32", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"label names: {len(names)} labels, {8 * len(names)} templated sentences" in out
    # max_length is measured over the pool's texts, not only the short templated sentences: the test reads whole
    assert "test:" not in out and "truncated" not in out, out
    assert "test" in json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert f"model: {run / 'last'} (no dev split" in out  # no dev split: the final weights, no best/
    assert cli.main(["predict", "--model", str(run / "last"), "--quiet", "湖人队击败勇士"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in names
    # a test label the names do not list is refused, naming it
    (tmp_path / "two.txt").write_text(f"{names[0]}\n{names[1]}\n", encoding="utf-8")
    assert cli.main(["train", "--data", str(tiny_data_dir / "train.csv"), "--label-names", str(tmp_path / "two.txt"),
                     "--test", str(tiny_data_dir / "test.csv"), "--model", str(tiny_model_dir), "--output",
                     str(tmp_path / "run2"), "--max-steps", "1", "--device", "cpu", "--quiet"]) == 2
    assert "are not in" in capsys.readouterr().err
