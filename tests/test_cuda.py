"""CUDA paths: fp16 with the GradScaler, bf16, and prediction on the GPU. Skipped on machines without a GPU.

The tiny encoder here uses the bundled bert-base-chinese tokenizer, so these tests need nothing beyond the repo.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import textclf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def zh_tiny_model(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = ROOT / "examples" / "tokenizers" / "bert-base-chinese"
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("zh-tiny")
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(model_dir, tmp_path, precision, **overrides):
    data = textclf.load_dataset(ROOT / "tests" / "data" / "tiny")
    config = textclf.TrainConfig(epochs=3, batch_size=16, lr=1e-3, precision=precision, device="cuda",
                                 log_steps=1, **overrides)
    trainer = textclf.Trainer(model=str(model_dir), data=data, output_dir=tmp_path / precision, config=config,
                              progress=False)
    return trainer, trainer.fit()


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_cuda_training_runs_and_learns(zh_tiny_model, tmp_path, precision):
    trainer, result = _train(zh_tiny_model, tmp_path, precision)
    assert trainer.runtime.device.type == "cuda"
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    initial = textclf.TextClassifier.from_encoder(str(zh_tiny_model), trainer.label_map)
    trained = dict(trainer.model.named_parameters())
    changed = [name for name, p in initial.named_parameters() if name.startswith("encoder.")
               and not torch.equal(p, trained[name].detach().cpu())]
    assert changed  # the optimizer really updated the encoder under this precision


def test_fp16_overflow_skips_step_and_schedule(zh_tiny_model, tmp_path):
    """A step whose fp16 gradients overflow is skipped by the scaler, and the schedule does not advance."""
    data = textclf.load_dataset(ROOT / "tests" / "data" / "tiny")
    config = textclf.TrainConfig(max_steps=3, batch_size=16, precision="fp16", device="cuda")
    trainer = textclf.Trainer(model=str(zh_tiny_model), data=data, output_dir=tmp_path / "o", config=config,
                              progress=False)
    trainer.optimizer, trainer.scheduler = trainer.configure_optimizers()
    trainer.scaler = trainer.runtime.grad_scaler()
    trainer.ddp_model = trainer.model
    trainer.accumulated = 1
    batch = next(iter(trainer._loader(trainer.train_sampler.epoch_batches(0)[:1])))
    trainer.training_step(batch)
    next(trainer.model.parameters()).grad.fill_(math.inf)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    schedule_step = trainer.scheduler.last_epoch
    trainer.optimizer_step()
    assert trainer.state.skipped_steps == 1
    assert trainer.scheduler.last_epoch == schedule_step
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_predictor_on_cuda_matches_cpu(zh_tiny_model, tmp_path):
    trainer, _ = _train(zh_tiny_model, tmp_path, "fp32")
    texts = ["股市今日大涨", "篮球比赛结果", "新楼盘开盘"]
    gpu = textclf.Predictor.from_pretrained(tmp_path / "fp32" / "best", device="cuda", precision="fp32")
    cpu = textclf.Predictor.from_pretrained(tmp_path / "fp32" / "best", device="cpu", precision="fp32")
    assert [p.label for p in gpu.predict(texts)] == [p.label for p in cpu.predict(texts)]
    assert torch.allclose(torch.tensor(gpu.logits(texts)), torch.tensor(cpu.logits(texts)), atol=1e-4)
