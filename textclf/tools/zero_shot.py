"""A classifier from label names alone: the training rows a sentence encoder can learn from before anyone labels.

``textclf train --data pool.csv --label-names labels.txt`` turns the names (and descriptions) into labelled rows and
then trains as usual (the automatic recipe: contrastive few-shot training of the sentence encoder), so the result
is an ordinary model folder. The rows are of two kinds:

* **templated sentences** -- each label's phrase in a few sentence templates ("This text is about {}." /
  "这是一条关于{}的内容。"), as SetFit's zero-shot recipe builds them;
* **the pool's clearest rows** -- each pool text is compared with every label (cosine similarity of the encoder's
  embeddings to the mean embedding of the label's templated sentences); the rows a label wins by the widest margin
  are taken as examples of it, a few per label (self-training on the pool's confident rows). They carry the pool's
  own wording, which templates cannot.

Both the pool's embeddings and the choice are deterministic for a pool, an encoder and a seed.
"""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from ..data.label_names import LabelNames
from ..data.readers import DatasetSplits, Split, read_split
from ..errors import DataError
from .baseline import is_mostly_cjk

ENGLISH_TEMPLATES = ("This text is about {}.", "This example is {}.", "{}", "A text about {}.",
                     "It is about {}.", "The topic is {}.", "This is {}.", "Regarding {}.")
CHINESE_TEMPLATES = ("这是一条关于{}的内容。", "{}", "这段文字讲的是{}。", "主题：{}。", "关于{}。", "这是{}。",
                     "内容涉及{}。", "{}相关。")
POOL_ROWS_PER_LABEL = 8  # the pool's clearest rows taken per label (measured in docs/small-data.md)


def templated_rows(names: LabelNames, chinese: bool) -> tuple[list[str], list[str]]:
    """Each label's phrase (its description, else its name) in every template: ``(texts, labels)``."""
    templates = CHINESE_TEMPLATES if chinese else ENGLISH_TEMPLATES
    texts, labels = [], []
    for i, name in enumerate(names.names):
        for template in templates:
            texts.append(template.format(names.phrase(i)))
            labels.append(name)
    return texts, labels


def pool_rows(pool_embeddings: np.ndarray, label_embeddings: np.ndarray, per_label: int) -> list[tuple[int, int]]:
    """``(pool row, label)`` pairs: for each label, the ``per_label`` rows it wins by the widest margin of cosine
    similarity (a row is taken for one label at most)."""
    similarity = pool_embeddings @ label_embeddings.T
    best = similarity.argmax(axis=1)
    ordered = np.sort(similarity, axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if similarity.shape[1] > 1 else 0.0)
    chosen = []
    for label in range(similarity.shape[1]):
        rows = np.flatnonzero(best == label)
        rows = rows[np.argsort(-margin[rows], kind="stable")][:per_label]
        chosen.extend((int(r), label) for r in rows)
    return chosen


def dataset_from_label_names(pool, names: LabelNames, encoder: str, test=None, data_config: DataConfig | None = None,
                             per_label: int = POOL_ROWS_PER_LABEL, device: str = "auto",
                             say=print) -> DatasetSplits:
    """The training rows of a zero-shot start (see the module docstring), and ``test`` read as labelled data.

    Args:
        pool: the unlabelled texts (any label column is ignored).
        names: the labels, from :func:`~textclf.data.label_names.read_label_names`.
        encoder: the sentence encoder that will be trained (``minilm``): it also embeds pool and names.
        test: an optional labelled file, scored after training; its labels must be among ``names``.
        per_label: the pool's clearest rows taken per label (0: templates only, SetFit's zero-shot recipe).
    """
    from .select import embed_phrases, read_pool, score_pool

    data_config = data_config or DataConfig()
    texts, _, source = read_pool(pool, data_config)
    chinese = is_mostly_cjk(texts or list(names.names))
    template_texts, template_labels = templated_rows(names, chinese)
    train_texts, train_labels = list(template_texts), list(template_labels)
    if per_label > 0 and texts:
        pool_embeddings = score_pool(encoder, texts, device=device).embeddings
        phrases = embed_phrases(encoder, template_texts, device).reshape(len(names.names), -1,
                                                                           pool_embeddings.shape[1])
        prototypes = phrases.mean(axis=1)
        prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
        for row, label in pool_rows(pool_embeddings, prototypes, per_label):
            train_texts.append(texts[row])
            train_labels.append(names.names[label])
    label_map = names.label_map
    train = Split("train", train_texts, train_labels, f"{names.source} + {source}",
                  [f"template {i + 1}" for i in range(len(template_texts))]
                  + [f"{source} (pool)" for _ in range(len(train_texts) - len(template_texts))], "item")
    test_split = None
    if test is not None:
        test_split = read_split(test, "test", data_config)
        unknown = sorted({y for y in test_split.labels if y not in set(names.names)})
        if unknown:
            raise DataError(f"{test_split.source}: labels {unknown[:5]} are not in {names.source} "
                            f"({', '.join(names.names)}); name every test label in the label-names file")
    taken = len(train_texts) - len(template_texts)
    say(f"label names: {len(names.names)} labels, {len(template_texts)} templated sentences and {taken} of the "
        f"pool's {len(texts)} rows that the names describe best ({per_label} per label at most), to train on")
    return DatasetSplits(train, None, test_split, label_map, pool=texts)
