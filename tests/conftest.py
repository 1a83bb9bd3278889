"""Shared fixtures: a tiny BERT built from a config (random weights, seconds to train) and the tiny data set.

The tiny encoder uses the real tokenizer of the bundled MiniLM (its uncased WordPiece vocabulary covers
English and CJK characters), so tokenization is exactly what users get; only the network is small.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from textclf.train.callbacks import Callback

TESTS = Path(__file__).parent
TINY_DATA = TESTS / "data" / "tiny"


def build_tiny_encoder(folder: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """Save a 2-layer, 32-wide BERT with the MiniLM tokenizer into ``folder`` and return it.

    ``dropout`` sets the encoder's hidden and attention dropout (0 makes training steps deterministic functions
    of the batch, as the gradient-accumulation equivalence test needs).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from textclf.model.classifier import resolve_model_name

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local model folder usable as ``model=`` anywhere a hub name is."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


def make_sentence_encoder(folder: Path, pooling: str = "mean_tokens", normalize: bool = True) -> Path:
    """Give a model folder the sentence-transformers files that say how it pools (as all-MiniLM-L6-v2 has)."""
    import json

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{f"pooling_mode_{m}": m == pooling for m in modes}}))
    return folder


@pytest.fixture(scope="session")
def tiny_sentence_encoder(tmp_path_factory) -> Path:
    """The tiny encoder as a mean-pooling, normalising sentence embedder (what the few-shot recipe needs)."""
    return make_sentence_encoder(build_tiny_encoder(tmp_path_factory.mktemp("tiny-sentence-bert")))


class SignalAt(Callback):
    """Sends this process a real SIGTERM after optimizer step ``step`` (the trainer's handler catches it and stops
    with a checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs at the next bytecode boundary


@pytest.fixture(scope="session")
def tiny_data_dir() -> Path:
    """tests/data/tiny: 200/50/50 THUCNews titles in 10 classes (train/dev/test CSV)."""
    return TINY_DATA


@pytest.fixture()
def tiny_data(tiny_data_dir):
    import textclf

    return textclf.load_dataset(tiny_data_dir)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the whole suite: tiny models gain nothing from more, and on a busy 2-core
    machine extra threads spin (a tiny fit took 4.5 s with two threads and 0.4 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def private_score_cache(tmp_path_factory):
    """textclf select and train --label-names cache a pool's scores under ~/.cache/textclf by default: the suite
    keeps its own (and subprocesses inherit it), never touching the user's."""
    import os

    previous = os.environ.get("TEXTCLF_CACHE")
    os.environ["TEXTCLF_CACHE"] = str(tmp_path_factory.mktemp("textclf-cache"))
    yield
    if previous is None:
        os.environ.pop("TEXTCLF_CACHE", None)
    else:
        os.environ["TEXTCLF_CACHE"] = previous
