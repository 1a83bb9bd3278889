"""Shared fixtures: a tiny BERT built from a config (random weights, seconds to train) and the tiny data set.

The tiny encoder uses the real tokenizer of the bundled MiniLM (its uncased WordPiece vocabulary covers
English and CJK characters), so tokenization is exactly what users get; only the network is small.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
