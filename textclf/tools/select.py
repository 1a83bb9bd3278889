"""``textclf select``: the rows of an unlabelled pool that an annotator should label next.

A round of labelling is: train (the automatic recipe), select, label, repeat. :func:`select_rows` reads the pool,
leaves out every row already labelled (any text in the ``labelled`` files), scores the rest with the model (class
probabilities and text embeddings, in one pass, cached per model and pool), asks a query strategy
(:mod:`textclf.tools.strategies`) for ``budget`` rows and writes them, best first, as a CSV that ``textclf train``
reads once the ``label`` column is filled in::

    text,label,guess,confidence,pool_line
    "How far is the moon ?",,NUM,0.41,1734

Round 0 has no trained model: ``model`` is then an encoder (``minilm``) and the first batch covers the pool, and,
with label names, every class (:func:`~textclf.tools.strategies.first_batch`); ``guess`` is then the nearest label
name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import outputs
from ..config import DataConfig
from ..data.label_names import LabelNames
from ..data.labels import LabelMap
from ..data.readers import read_unlabelled
from ..errors import ConfigError, DataError, ModelLoadError
from ..model import bundle
from . import strategies

CACHE_ENV = "TEXTCLF_CACHE"


@dataclass
class PoolScores:
    """What a model says about every row of a pool: ``embeddings [N, H]`` (L2-normalised) and, for a trained
    model, ``probabilities [N, C]`` over ``label_names`` (None for a bare encoder)."""

    embeddings: np.ndarray
    probabilities: np.ndarray | None
    label_names: list[str] | None


@dataclass
class Selection:
    """The rows chosen: ``rows`` index the pool's texts, best first; ``guesses`` / ``confidence`` per row."""

    rows: np.ndarray
    texts: list[str]
    guesses: list[str | None]
    confidence: list[float | None]
    pool_lines: list
    strategy: str
    output: Path | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "textclf")


def read_pool(pool, config: DataConfig | None = None):
    """The pool's texts and where each is (line numbers), duplicates dropped (the first copy stays): a text is
    labelled once. Any label column is ignored."""
    split = read_unlabelled(pool, "pool", config)
    seen, texts, lines = set(), [], []
    for text, line in zip(split.texts, split.locations or range(1, len(split.texts) + 1)):
        if text not in seen:
            seen.add(text)
            texts.append(text)
            lines.append(line)
    return texts, lines, split.source


def labelled_texts(files, config: DataConfig | None = None) -> set[str]:
    """Every text in the labelled files (CSV/TSV/JSONL that ``textclf train`` reads, or folders of them)."""
    found: set[str] = set()
    for source in files or ():  # a row sent to the annotator counts, its label filled in or not
        found.update(read_unlabelled(source, "labelled", config).texts)
    return found


def score_pool(model: str | Path, texts: list[str], batch_size: int = 64, device: str = "auto",
               max_length: int = 128, cache_dir: str | Path | None = None, model_class=None) -> PoolScores:
    """Embeddings (and, for a trained model folder, probabilities) of ``texts``, from the cache when this model
    has scored these texts before.

    Args:
        model: a trained model folder (``OUTPUT/best``), or an encoder (``minilm``, a folder or hub name) for round 0.
        cache_dir: where scores are kept (default ``$TEXTCLF_CACHE`` or ``~/.cache/textclf``); None with
            ``TEXTCLF_CACHE=off`` keeps nothing.
    """
    from ..deploy.predict import Predictor

    trained = bundle.has_meta(model)
    if trained and bundle.read_meta(model).get("kind") == "tfidf":
        raise ConfigError(f"{model} is a TF-IDF baseline: selection needs text embeddings, which it has none of; "
                          "select with a transformer model folder (OUTPUT/best) or, in round 0, an encoder (minilm)")
    key = _cache_key(model, texts, max_length)
    cache = _cache_file(cache_dir, key)
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as stored:
                probabilities = stored["probabilities"] if "probabilities" in stored else None
                names = [str(n) for n in stored["label_names"]] if "label_names" in stored else None
                return PoolScores(stored["embeddings"], probabilities, names)
        except (OSError, ValueError, KeyError):  # a damaged cache entry is recomputed, never trusted
            pass
    if trained:
        predictor = Predictor.from_pretrained(model, device=device, batch_size=batch_size, model_class=model_class)
    else:
        predictor = _encoder_predictor(str(model), device, batch_size, max_length)
    if getattr(predictor.model, "head", None) is None or predictor.windows is not None:
        raise ConfigError(f"{model}: selection reads the first max_length tokens of each text through one model; "
                          "a seed ensemble or a sliding-window model is not supported yet: select with one of its "
                          "members, or a model trained with --long-texts truncate")
    if predictor.label_map.multi_label:
        raise ConfigError(f"{model} is a multi-label model; selection supports single-label models so far")
    width = predictor.model.config.hidden_size
    prepared = predictor.normalizer(texts) if predictor.normalizer is not None else texts
    both, _ = predictor.inputs.logits(_EmbeddingsAndLogits(predictor.backend), predictor.tokenizer, prepared,
                                      batch_size, width + len(predictor.label_map))
    embeddings = both[:, :width]
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    probabilities = predictor.probabilities(np.ascontiguousarray(both[:, width:])) if trained else None
    scores = PoolScores(embeddings.astype(np.float32), probabilities,
                        list(predictor.label_map.names) if trained else None)
    if cache is not None:
        _store(cache, scores)
    return scores


def embed_phrases(encoder: str, phrases: list[str], device: str = "auto", max_length: int = 128) -> np.ndarray:
    """L2-normalised embeddings ``[len(phrases), H]`` of short texts (label names) by an encoder."""
    return score_pool(encoder, phrases, device=device, max_length=max_length, cache_dir=False).embeddings


def select_rows(model: str | Path, pool, budget: int, output: str | Path | None = None, strategy: str | None = None,
                seed: int = 0, labelled=(), label_names: LabelNames | None = None,
                data_config: DataConfig | None = None, batch_size: int = 64, device: str = "auto",
                cache_dir: str | Path | None = None, model_class=None) -> Selection:
    """Choose ``budget`` rows of ``pool`` for an annotator and (with ``output``) write them as a CSV.

    Args:
        model: a trained model folder, or for round 0 an encoder name or folder (``minilm``).
        pool: the unlabelled texts (a CSV/TSV/JSONL/TXT file, or anything ``read_split`` takes).
        budget: rows to choose.
        output: the CSV to write (``text,label,guess,confidence,pool_line``), best row first.
        strategy: one of :data:`~textclf.tools.strategies.STRATEGIES`; default
            :data:`~textclf.tools.strategies.DEFAULT_STRATEGY` (round 0: the first-batch rule).
        seed: the same pool, model and seed choose the same rows.
        labelled: files of rows already labelled; their texts are never chosen.
        label_names: round 0: share the budget across these classes
            (:func:`~textclf.tools.strategies.first_batch`).
        data_config: how to read the pool and the labelled files (columns, encoding).
    """
    data_config = data_config or DataConfig()
    if output is not None:  # before any work: the one output rule every command follows (textclf.outputs)
        outputs.check_output_file(output)
        outputs.check_not_input(output, {"--model": model, "--labelled": [Path(f) for f in labelled],
                                         "--pool": pool if isinstance(pool, (str, os.PathLike)) else None})
    texts, lines, source = read_pool(pool, data_config)
    done = labelled_texts(labelled, data_config)
    labelled_rows = [i for i, text in enumerate(texts) if text in done]
    if len(labelled_rows) == len(texts):
        raise DataError(f"{source}: every row of the pool is labelled already ({len(texts)} rows); nothing to select")
    scores = score_pool(model, texts, batch_size=batch_size, device=device, cache_dir=cache_dir,
                        model_class=model_class)
    if scores.probabilities is None:  # round 0: no trained model
        if strategy not in (None, *strategies.ROUND_ZERO):
            raise ConfigError(f"select: --strategy {strategy} needs a trained model's probabilities; {model} is an "
                              "encoder (round 0): leave --strategy out (it covers the pool, and every class with "
                              f"--label-names), or use one of {', '.join(strategies.ROUND_ZERO)}")
        name_embeddings = None
        if label_names is not None:
            name_embeddings = embed_phrases(str(model), [label_names.phrase(i) for i in range(len(label_names.names))],
                                            device)
        if strategy is None:
            rows = strategies.first_batch(scores.embeddings, budget, seed, name_embeddings, labelled_rows)
        else:  # a strategy named at round 0 runs as it is, over the whole pool
            rows = strategies.select(strategy, np.zeros((len(texts), 1)), scores.embeddings, labelled_rows, budget,
                                     seed)
        strategy = strategy or ("first batch (label names)" if label_names is not None else "first batch (random)")
        if name_embeddings is not None:
            similarity = scores.embeddings[rows] @ name_embeddings.T
            guesses = [label_names.names[j] for j in similarity.argmax(axis=1)]
            confidence = [None] * len(rows)
        else:
            guesses, confidence = [None] * len(rows), [None] * len(rows)
    else:
        strategy = strategy or strategies.DEFAULT_STRATEGY
        rows = strategies.select(strategy, scores.probabilities, scores.embeddings, labelled_rows, budget, seed)
        guesses = [scores.label_names[j] for j in scores.probabilities[rows].argmax(axis=1)]
        confidence = [float(p) for p in scores.probabilities[rows].max(axis=1)]
    selection = Selection(rows, [texts[i] for i in rows], guesses, confidence, [lines[i] for i in rows], strategy)
    if output is not None:
        selection.output = _write_selection(selection, output, data_config)
    return selection


def _write_selection(selection: Selection, output: str | Path, data_config: DataConfig | None = None) -> Path:
    """The CSV an annotator fills in: the text and label columns under the names ``textclf train`` reads (so the
    file trains as it is), the model's guess and confidence, and the row's line in the pool."""
    data_config = data_config or DataConfig()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([data_config.text_column, data_config.label_column, "guess", "confidence", "pool_line"])
    for text, guess, confidence, line in zip(selection.texts, selection.guesses, selection.confidence,
                                             selection.pool_lines):
        writer.writerow([text, "", guess or "", "" if confidence is None else f"{confidence:.4f}", line])
    path = Path(output)
    # UTF-8 with a byte-order mark: spreadsheet programs then show Chinese text correctly; textclf reads it too
    outputs.write_file_atomically(path, "\ufeff" + buffer.getvalue())
    return path


# ---- internals -------------------------------------------------------------------------------------------------


class _EmbeddingsAndLogits:
    """A prediction backend that returns each text's embedding and logits side by side ``[B, H + C]``, so that the
    Predictor's tokenizing, truncation and length-sorted batching serve selection unchanged."""

    def __init__(self, backend):
        if not hasattr(backend, "module"):
            raise ModelLoadError("selection needs the PyTorch model (an OUTPUT/best folder), not an export")
        self.backend = backend
        self.pad_to_multiple_of = backend.pad_to_multiple_of

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        runtime, module = self.backend.runtime, self.backend.module
        with torch.inference_mode(), runtime.autocast():
            embeddings = module(input_ids.to(runtime.device), attention_mask.to(runtime.device),
                                return_embeddings=True)
            logits = module.head(embeddings)  # eval mode: dropout is the identity
        return torch.cat([embeddings.float(), logits.float()], dim=1).cpu().numpy()


def _encoder_predictor(name: str, device: str, batch_size: int, max_length: int):
    """A Predictor over a bare encoder with its own sentence pooling (round 0): only its embeddings are used."""
    from ..deploy.predict import Predictor
    from ..model.classifier import TextClassifier, load_tokenizer, resolve_model_name, sentence_pooling

    resolved = resolve_model_name(name)
    pooling = sentence_pooling(resolved) or {"pooling": "mean", "normalize": True}
    model = TextClassifier.from_encoder(resolved, LabelMap(["a", "b"]), pooling=pooling["pooling"])
    return Predictor(model, load_tokenizer(resolved), model.label_map, device, max_length, batch_size=batch_size)


def _cache_key(model, texts: list[str], max_length: int) -> str:
    digest = hashlib.sha256()
    if Path(model).is_dir():  # a folder written again in place must not reuse old scores: its files' size and time
        folder = Path(model).resolve()
        digest.update(str(folder).encode())
        for file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json")):
            info = file.stat()
            digest.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    else:  # a hub name or alias: its files do not change under the name
        digest.update(f"encoder:{model}".encode())
    digest.update(f"max_length:{max_length}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def _cache_file(cache_dir, key: str) -> Path | None:
    if cache_dir is False or os.environ.get(CACHE_ENV, "").lower() == "off":
        return None
    return Path(cache_dir or default_cache_dir()) / "pool-scores" / f"{key}.npz"


def _store(cache: Path, scores: PoolScores) -> None:
    arrays = {"embeddings": scores.embeddings}
    if scores.probabilities is not None:
        arrays.update(probabilities=scores.probabilities, label_names=np.asarray(scores.label_names))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        outputs.write_file_atomically(cache, buffer.getvalue())
    except OSError:  # a read-only home or a full disk costs the next round its speed, not this round its result
        pass
