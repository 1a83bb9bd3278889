"""Tests for textclf.train.speedups: the speed-ups change no maths (same dropout law, same updates) and undo
themselves."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_encoder
from torch import nn

import textclf
from textclf.data.readers import DatasetSplits
from textclf.train.speedups import (
    FastDropout,
    SparseEmbeddingGradients,
    restore_dropout,
    swap_dropout,
    training_speedups,
)


@pytest.fixture(scope="module")
def nodrop_model_dir(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0)


# ==================================================================================================================
# FastDropout
# ==================================================================================================================


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fast_dropout_keeps_1_minus_p_and_scales_survivors(p):
    torch.manual_seed(0)
    out = FastDropout(p)(torch.ones(400_000))
    kept = out != 0
    # 400k Bernoulli draws: the standard error of the kept fraction is below 0.001.
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))



@pytest.mark.parametrize("p", [0.1, 1 / 65536, 1 - 1 / 65536])
def test_fast_dropout_keeps_exactly_the_lanes_at_or_above_the_threshold(p):
    """The mask, written with int16 arithmetic, against its definition on the same random lanes: a lane (uniform
    over [-32768, 32767]) keeps its element when it is at least round(p * 65536) - 32768. Off by one, the keep
    probability would move by 1/65536, which no statistical test sees."""
    count = 100_003  # not a multiple of the four lanes per draw
    torch.manual_seed(5)
    out = FastDropout(p)(torch.ones(count))
    torch.manual_seed(5)
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
    lanes = draws.view(torch.int16)[:count]
    assert torch.equal(out != 0, lanes >= round(p * 65536) - 32768)

def test_fast_dropout_masks_are_independent_across_positions():
    torch.manual_seed(0)
    kept = (FastDropout(0.5)(torch.ones(100_000, 8)) != 0).float()
    # The four 16-bit lanes of one 64-bit draw land on neighbouring elements: they must not be correlated.
    correlation = torch.corrcoef(kept.T)
    off_diagonal = correlation[~torch.eye(8, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.02


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    x = torch.randn(64, 33, requires_grad=True)
    out = FastDropout(0.3)(x)
    out.sum().backward()
    expected = (out != 0).float() / 0.7
    assert torch.allclose(x.grad, expected)


def test_fast_dropout_is_the_identity_in_eval_mode_and_at_p0():
    x = torch.randn(5, 7)
    assert FastDropout(0.4).eval()(x) is x
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))


def test_fast_dropout_follows_the_seed_and_keeps_the_dtype():
    x = torch.ones(1000, dtype=torch.bfloat16)
    torch.manual_seed(3)
    first = FastDropout(0.2)(x)
    torch.manual_seed(3)
    second = FastDropout(0.2)(x)
    assert torch.equal(first, second)
    assert first.dtype == torch.bfloat16


def test_swap_and_restore_dropout():
    class Marked(nn.Dropout):
        pass

    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.3), Marked(0.1)))
    model.eval()
    originals = [model[1], model[2][0], model[2][1]]
    swapped = swap_dropout(model)
    assert isinstance(model[1], FastDropout) and model[1].p == 0.2 and not model[1].training
    assert isinstance(model[2][0], FastDropout) and model[2][0].p == 0.3
    assert model[2][1] is originals[2]  # a subclass may do more than drop: left alone
    model.train()
    restore_dropout(swapped)
    assert [model[1], model[2][0], model[2][1]] == originals
    assert model[1].training  # the mode the model is in now, not the one it had when swapped


# ==================================================================================================================
# sparse embedding gradients
# ==================================================================================================================


def _tiny_bert(seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=500, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(config)


def _train(model, sparse: SparseEmbeddingGradients | None, batches, accum=2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for start in range(0, len(batches), accum):
        for ids in batches[start:start + accum]:
            (model(input_ids=ids).last_hidden_state.square().mean() / accum).backward()
        grad = model.get_input_embeddings().weight.grad
        assert grad is not None and not grad.is_sparse  # AdamW and clipping get a dense gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if sparse is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            sparse.zero_grad(optimizer)
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_sparse_embedding_gradients_give_the_same_updates():
    torch.manual_seed(1)
    batches = [torch.randint(1, 500, (4, 9)) for _ in range(6)]
    dense = _train(_tiny_bert(), None, batches)
    model = _tiny_bert()
    sparse = SparseEmbeddingGradients(model)
    sparse.enable()
    assert model.get_input_embeddings().sparse
    buffer_ids = set()

    def remember_buffer(module, args):
        if module.weight.grad is not None:
            buffer_ids.add(module.weight.grad.data_ptr())

    model.get_input_embeddings().register_forward_pre_hook(remember_buffer)
    trained = _train(model, sparse, batches)
    for name, value in dense.items():
        assert torch.allclose(trained[name], value, atol=1e-6), name
    assert len(buffer_ids) == 1  # one dense buffer for the whole run, zeroed in place
    sparse.disable()
    embedding = model.get_input_embeddings()
    assert not embedding.sparse and embedding.weight.grad is None


def test_a_frozen_embedding_gets_no_buffer_until_it_thaws():
    model = _tiny_bert()
    embedding = model.get_input_embeddings()
    embedding.weight.requires_grad_(False)
    sparse = SparseEmbeddingGradients(model)
    sparse.enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    assert embedding.weight.grad is None and not embedding.sparse  # AdamW would otherwise still decay it
    embedding.weight.requires_grad_(True)  # gradual unfreezing thaws it between two steps
    model(input_ids=torch.randint(1, 500, (2, 5))).last_hidden_state.sum().backward()
    assert embedding.weight.grad is not None and not embedding.weight.grad.is_sparse
    sparse.zero_grad(optimizer)
    assert embedding.sparse and torch.count_nonzero(embedding.weight.grad) == 0  # armed from now on


def test_a_sparse_gradient_in_an_empty_grad_is_made_dense():
    model = _tiny_bert()
    sparse = SparseEmbeddingGradients(model)
    sparse.enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.zero_grad(set_to_none=True)  # what an optimizer_step override might still call
    model(input_ids=torch.randint(1, 500, (2, 5))).last_hidden_state.sum().backward()
    assert not model.get_input_embeddings().weight.grad.is_sparse
    optimizer.step()  # AdamW refuses sparse gradients


# ==================================================================================================================
# in the Trainer
# ==================================================================================================================


def test_fit_with_and_without_speedups_trains_the_same_weights(nodrop_model_dir, tiny_data, tmp_path):
    """With no dropout in the model, the speed-ups must not change a single update (tolerance: summation order)."""
    data = DatasetSplits(tiny_data.train.subset(range(48)), None, None, tiny_data.label_map)
    weights = {}
    for speedups in (False, True):
        config = textclf.TrainConfig(max_length=32, batch_size=8, grad_accum=2, lr=1e-3, precision="fp32",
                                     device="cpu", seed=0, epochs=1, speedups=speedups, calibrate=False)
        trainer = textclf.Trainer(str(nodrop_model_dir), data, tmp_path / str(speedups), config, progress=False,
                                  model_config=textclf.ModelConfig(dropout=0.0))
        trainer.fit()
        weights[speedups] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        # fit() puts the model back as it was: plain dropout modules, a dense-gradient embedding, no buffer.
        assert not any(isinstance(m, FastDropout) for m in trainer.model.modules())
        embedding = trainer.model.encoder.get_input_embeddings()
        assert not embedding.sparse and embedding.weight.grad is None
        trainer.zero_grad()  # a step taken after fit() (a user's own) must not re-arm the buffer
        assert not embedding.sparse and embedding.weight.grad is None
    for name, value in weights[False].items():
        assert torch.allclose(weights[True][name], value, atol=1e-5), name


def test_speedups_are_undone_when_training_fails():
    model = nn.Module()
    model.encoder = _tiny_bert()
    with pytest.raises(RuntimeError, match="boom"):
        with training_speedups(model, enabled=True, distributed=False):
            assert model.encoder.get_input_embeddings().sparse
            raise RuntimeError("boom")
    assert not model.encoder.get_input_embeddings().sparse
    assert not any(isinstance(m, FastDropout) for m in model.modules())


def test_no_sparse_gradients_under_ddp():
    model = nn.Module()
    model.encoder = _tiny_bert()
    with training_speedups(model, enabled=True, distributed=True) as sparse:
        assert sparse is None and not model.encoder.get_input_embeddings().sparse


# ==================================================================================================================
# attention
# ==================================================================================================================


def test_cpu_dropout_attention_is_sdpa_when_nothing_is_dropped():
    """At a keep probability of 1 (p below 1/65536) the written-out attention must equal SDPA, padding included."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from textclf.train.speedups import cpu_dropout_attention

    torch.manual_seed(0)
    module = nn.Module()
    module.is_causal = False  # an encoder's self-attention, as BertSelfAttention declares it
    query, key, value = (torch.randn(3, 2, 7, 8) for _ in range(3))
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[1, :, :, 5:] = False  # the second text has 2 padding tokens
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)  # eager_mask's form
    for attention_mask in (mask, additive, None):
        ours, _ = cpu_dropout_attention(module, query, key, value, attention_mask, dropout=1e-9, scaling=0.3)
        reference, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=0.3)
        assert ours.shape == (3, 7, 2, 8)
        assert torch.allclose(ours, reference, atol=1e-5)
    # In bf16 the additive mask's minimum becomes -inf: padding still gets no weight, and nothing turns NaN.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = cpu_dropout_attention(module, *(t.bfloat16() for t in (query, key, value)), additive, dropout=1e-9,
                                        scaling=0.3)
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0, scaling=0.3)
    assert ours.dtype == torch.bfloat16 and not ours.isnan().any()
    assert torch.allclose(ours.float(), reference, atol=0.05)


def test_cpu_dropout_attention_drops_probabilities():
    from textclf.train.speedups import cpu_dropout_attention

    torch.manual_seed(0)
    query = key = torch.zeros(1, 1, 4, 2)  # uniform attention: every probability is 1/4
    value = torch.eye(4).view(1, 1, 4, 4)  # so the output is the (dropped, rescaled) probability matrix itself
    module = nn.Module()
    module.is_causal = False
    out, _ = cpu_dropout_attention(module, query, key, value, None, dropout=0.5)
    assert set(out.flatten().tolist()) <= {0.0, 0.5}


def test_the_encoder_uses_the_cpu_dropout_attention_during_fit_only(tiny_model_dir, tiny_data, tmp_path):
    from textclf.train.speedups import ATTENTION

    seen = []

    class Watch(textclf.Callback):
        def on_step_end(self, trainer):
            seen.append(trainer.model.encoder.config._attn_implementation)

    data = DatasetSplits(tiny_data.train.subset(range(16)), None, None, tiny_data.label_map)
    config = textclf.TrainConfig(max_length=32, batch_size=8, precision="fp32", device="cpu", epochs=1,
                                 calibrate=False)
    trainer = textclf.Trainer(str(tiny_model_dir), data, tmp_path / "run", config, callbacks=[Watch()],
                              progress=False)
    trainer.fit()
    assert seen == [ATTENTION, ATTENTION]
    assert trainer.model.encoder.config._attn_implementation == "sdpa"



@pytest.mark.parametrize("arch, extra", [
    ("bert", {}), ("roberta", {"pad_token_id": 1}), ("albert", {"embedding_size": 8}),
    ("distilbert", {"dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32}), ("electra", {"embedding_size": 8})])
def test_the_cpu_dropout_attention_and_its_mask_equal_sdpa_across_encoders(arch, extra):
    """Switched on for a padded batch in training mode (an attention dropout too small to drop anything), each
    encoder family computes what it computes with SDPA: the mask builder and the attention agree with its own."""
    from transformers import AutoConfig, AutoModel

    from textclf.train.speedups import use_cpu_dropout_attention

    config = AutoConfig.for_model(arch, vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=1e-9, dropout=0.0, attention_dropout=1e-9, **extra)
    torch.manual_seed(0)
    encoder = AutoModel.from_config(config, attn_implementation="sdpa").train()
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding in the second text
    expected = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    model = nn.Module()
    model.encoder = encoder
    assert use_cpu_dropout_attention(model) is encoder
    ours = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(ours[mask.bool()], expected[mask.bool()], atol=1e-5)

def test_an_embedding_tied_to_an_mlm_head_keeps_dense_gradients():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=500, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert SparseEmbeddingGradients(model).embeddings == []  # the head's gradient is dense every step anyway
