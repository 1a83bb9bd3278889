"""MLM pretraining (textclf.train.pretrain): masking rates, whole-word masking, the loop, exact resume, tokenizer
training.

Models are 2-layer, 32-wide BERTs built from a JSON config (which also exercises ``--config PATH.json``); the
tokenizer is the bundled MiniLM WordPiece tokenizer (English pieces and single CJK characters).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textclf import Callback, TrainConfig, Trainer, load_dataset
from textclf.cli import main
from textclf.config import PretrainConfig
from textclf.data.readers import DataWarning
from textclf.errors import ConfigError, DataError, OutputDirError, TrainingError
from textclf.model.classifier import load_tokenizer, resolve_model_name
from textclf.train.pretrain import (
    MLMDataset,
    Pretrainer,
    align_words,
    load_segmenter,
    mask_tokens,
    read_corpus,
    train_tokenizer,
)

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}
CORPUS = ["央行宣布下调存款准备金率", "湖人主场大胜勇士", "考研报名人数创历史新高", "北京二手房成交量回升",
          "苹果发布新一代芯片", "unbelievably good tokenization", "the quick brown fox jumps", "股市今日大涨"] * 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_name("minilm"))


@pytest.fixture()
def arch(tmp_path) -> str:
    path = tmp_path / "tiny-bert.json"
    path.write_text(json.dumps(TINY_BERT))
    return str(path)


def tiny_config(**overrides) -> TrainConfig:
    base = dict(max_steps=12, lr=5e-3, batch_size=16, grad_accum=2, max_length=32, precision="fp32", device="cpu",
                seed=3, log_steps=2, save_steps=4, warmup_ratio=0.1)
    return TrainConfig(**{**base, **overrides})


# ---- masking ------------------------------------------------------------------------------------------------------


def _batch(rows=256, width=64, word_size=1):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (rows, width), generator=generator)
    word_ids = (torch.arange(width) // word_size).repeat(rows, 1) - 1
    word_ids[:, 0] = -1  # [CLS]
    word_ids[:, -1] = -1  # [SEP]
    return input_ids, word_ids


def test_masking_rate_and_80_10_10_split():
    input_ids, word_ids = _batch()
    random_ids = torch.arange(5000, 6000)  # disjoint from the input ids, so random replacements are recognisable
    masked, labels = mask_tokens(input_ids, word_ids, PretrainConfig(), 103, random_ids,
                                 torch.Generator().manual_seed(1))
    chosen = labels != -100
    maskable = word_ids >= 0
    rate = chosen.sum() / maskable.sum()
    assert abs(float(rate) - 0.15) < 0.01  # 16k maskable tokens: the standard error is 0.003
    assert not chosen[~maskable].any(), "special tokens must never be chosen"
    assert torch.equal(labels[chosen], input_ids[chosen])
    assert torch.equal(masked[~chosen], input_ids[~chosen])
    n = int(chosen.sum())
    as_mask = float((masked[chosen] == 103).sum()) / n
    as_random = float(((masked[chosen] >= 5000) & (masked[chosen] < 6000)).sum()) / n
    kept = float((masked[chosen] == input_ids[chosen]).sum()) / n
    assert abs(as_mask - 0.8) < 0.03 and abs(as_random - 0.1) < 0.02 and abs(kept - 0.1) < 0.02
    # the same seed gives the same masks (what exact resume relies on); another seed does not
    again = mask_tokens(input_ids, word_ids, PretrainConfig(), 103, random_ids, torch.Generator().manual_seed(1))
    other = mask_tokens(input_ids, word_ids, PretrainConfig(), 103, random_ids, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(other[1], labels)


def test_other_rates_and_a_batch_never_without_a_prediction():
    input_ids, word_ids = _batch()
    config = PretrainConfig(mask_prob=0.4, mask_token_prob=1.0, random_token_prob=0.0)
    masked, labels = mask_tokens(input_ids, word_ids, config, 103, torch.arange(5), torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert abs(float(chosen.sum() / (word_ids >= 0).sum()) - 0.4) < 0.015
    assert (masked[chosen] == 103).all()
    # one short row at a low rate: nothing would be chosen, yet one token is
    ids, words = torch.tensor([[101, 7, 8, 102]]), torch.tensor([[-1, 0, 1, -1]])
    _, labels = mask_tokens(ids, words, PretrainConfig(mask_prob=1e-6), 103, torch.arange(5),
                            torch.Generator().manual_seed(0))
    assert int((labels != -100).sum()) == 1 and labels[0, 0] == -100 and labels[0, 3] == -100


def test_whole_words_are_masked_together_at_the_same_rate():
    input_ids, word_ids = _batch(word_size=3)
    _, labels = mask_tokens(input_ids, word_ids, PretrainConfig(), 103, torch.arange(5000, 6000),
                            torch.Generator().manual_seed(4))
    chosen = labels != -100
    for row in range(len(word_ids)):
        for word in word_ids[row].unique().tolist():
            if word >= 0:
                picked = chosen[row, word_ids[row] == word]
                assert picked.all() or not picked.any(), f"row {row}: word {word} partly masked"
    assert abs(float(chosen.sum() / (word_ids >= 0).sum()) - 0.15) < 0.02


# ---- word groups --------------------------------------------------------------------------------------------------


def test_word_groups_wordpiece_chinese_characters_and_segmentation(tokenizer):
    text = "unbelievably 央行宣布"
    pieces = tokenizer.tokenize(text)
    assert any(p.startswith("##") for p in pieces)  # the English word is split into WordPiece pieces
    whole = MLMDataset([text], tokenizer, 32)[0]["word_ids"].tolist()
    n_english = len(pieces) - 4
    # [CLS], the English pieces as one word, then each Chinese character its own word, [SEP]
    assert whole == [-1] + [0] * n_english + [1, 2, 3, 4] + [-1]
    per_token = MLMDataset([text], tokenizer, 32, whole_word=False)[0]["word_ids"].tolist()
    assert per_token == [-1, *range(len(pieces)), -1]
    segmented = MLMDataset([text], tokenizer, 32, words=[["unbelievably", "央行", "宣布"]])[0]["word_ids"].tolist()
    assert segmented == [-1] + [0] * n_english + [1, 1, 2, 2] + [-1]


def test_a_segmentation_must_spell_the_text(tokenizer):
    assert align_words("央行 宣布", ["央行", "宣布"]).tolist() == [0, 0, -1, 1, 1]
    with pytest.raises(DataError, match="words line 1.*expected '下调'"):
        MLMDataset(["央行宣布"], tokenizer, 32, words=[["央行", "下调"]])
    with pytest.raises(DataError, match="2 lines for 1 texts"):
        MLMDataset(["央行宣布"], tokenizer, 32, words=[["央行"], ["宣布"]])


def test_jieba_is_optional():
    try:
        import jieba  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install jieba"):
            load_segmenter("jieba")
    else:  # pragma: no cover - only where jieba is installed
        assert "".join(load_segmenter("jieba")("央行宣布下调")) == "央行宣布下调"
    assert load_segmenter("none") is None


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="pretrain.mask_prob"):
        PretrainConfig(mask_prob=0.0)
    with pytest.raises(ConfigError, match="pretrain.random_token_prob"):
        PretrainConfig(mask_token_prob=0.9, random_token_prob=0.2)
    with pytest.raises(ConfigError, match="pretrain.architecture"):
        PretrainConfig(architecture="huge")
    with pytest.raises(ConfigError, match="pretrain.segmenter"):
        PretrainConfig(segmenter="thulac")


# ---- the loop -----------------------------------------------------------------------------------------------------


def test_pretraining_lowers_the_loss_and_the_output_fine_tunes(tmp_path, arch, tiny_data_dir):
    config = tiny_config(max_steps=40, grad_accum=1, log_steps=10, save_steps=None)
    trainer = Pretrainer(None, texts=CORPUS, output_dir=tmp_path / "mlm", config=config,
                         pretrain_config=PretrainConfig(architecture=arch, tokenizer=resolve_model_name("minilm")),
                         progress=False)
    result = trainer.fit()
    losses = [h["loss"] for h in trainer.state.history]
    assert losses[-1] < losses[0] - 1.0, losses  # starts near ln(30522) = 10.3 on a corpus of 8 repeated texts
    assert result.model_dir == tmp_path / "mlm" / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pretrain.json"):
        assert (result.model_dir / name).is_file()
    # model/ is a plain encoder with an identity pooler: nothing missing, nothing unexpected for AutoModel
    weights = load_file(str(result.model_dir / "model.safetensors"))
    assert not any(k.startswith("cls.") for k in weights)
    assert torch.equal(weights["pooler.dense.weight"], torch.eye(32))
    assert torch.equal(weights["embeddings.word_embeddings.weight"],
                       trainer.model.bert.embeddings.word_embeddings.weight.detach())
    assert (tmp_path / "mlm" / "mlm" / "model.safetensors").is_file()
    assert (tmp_path / "mlm" / "config.yaml").is_file()
    fine = Trainer(model=str(result.model_dir), data=load_dataset(tiny_data_dir), output_dir=tmp_path / "clf",
                   config=tiny_config(max_steps=2, grad_accum=1, save_steps=None), progress=False)
    assert fine.fit().test is not None
    # continued pretraining from the saved MLM folder starts from the trained head: its first loss is low
    again = Pretrainer(str(tmp_path / "mlm" / "mlm"), texts=CORPUS, output_dir=tmp_path / "mlm2",
                       config=tiny_config(max_steps=2, grad_accum=1, log_steps=1, lr=1e-9), progress=False)
    again.fit()
    assert again.state.history[0]["loss"] < losses[0] - 1.0


class InterruptAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.state.global_step == self.step:
            trainer._interrupt_signal = 15  # what the SIGTERM handler sets


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, arch):
    FROM_SCRATCH = PretrainConfig(architecture=arch, tokenizer=resolve_model_name("minilm"))

    def run(out, callbacks=(), resume=None):
        trainer = Pretrainer(None, texts=CORPUS, output_dir=out, config=tiny_config(), progress=False,
                             pretrain_config=FROM_SCRATCH, callbacks=list(callbacks))
        return trainer, trainer.fit(resume=resume)

    full, _ = run(tmp_path / "full")
    # 128 texts / 16 = 8 micro-batches per epoch, 2 per step: step 6 is mid-epoch (epoch 1, batch 4), between
    # checkpoints 4 and 8, so the resume also replays steps 5 and 6
    cut, result = run(tmp_path / "cut", [InterruptAt(6)])
    assert result.interrupted and result.model_dir is None and result.signal == 15
    assert (tmp_path / "cut" / "checkpoints" / "step-000006").is_dir()
    resumed, result = run(tmp_path / "cut", resume="auto")
    assert result.global_step == 12
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert full.state.history == resumed.state.history
    log = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == [2, 4, 6, 8, 10, 12]
    # a resume with other settings is refused, naming them
    with pytest.raises(OutputDirError, match="train.lr"):
        Pretrainer(None, texts=CORPUS, output_dir=tmp_path / "cut", config=tiny_config(lr=1e-3),
                   pretrain_config=FROM_SCRATCH, progress=False).fit(resume="auto")



def test_the_epoch_plan_is_drawn_once_per_epoch_not_per_step(tmp_path, arch):
    """total_steps is asked after every step; answering must not re-plan the epoch each time."""
    trainer = Pretrainer(None, texts=CORPUS, output_dir=tmp_path / "mlm", config=tiny_config(save_steps=None),
                         pretrain_config=PretrainConfig(architecture=arch, tokenizer=resolve_model_name("minilm")),
                         progress=False)
    planned = []
    plan = trainer.train_sampler.epoch_batches
    trainer.train_sampler.epoch_batches = lambda epoch: planned.append(epoch) or plan(epoch)
    assert trainer.fit().global_step == 12  # 8 micro-batches of 16 per epoch, 2 per step: 3 epochs
    assert planned == [0, 0, 1, 2]  # the count (once), then each epoch's batches


# ---- data and tokenizer -------------------------------------------------------------------------------------------


def test_read_corpus_reads_training_files_only(tmp_path, tiny_data_dir):
    texts = read_corpus(tiny_data_dir)
    assert len(texts) == 200  # train.csv only, never dev.csv or test.csv
    txt = tmp_path / "corpus.txt"
    txt.write_text("第一行\n\n第二行\n", encoding="utf-8")
    with pytest.warns(DataWarning, match="line 2"):  # the blank line is dropped, with a warning
        assert read_corpus([txt, tiny_data_dir])[:2] == ["第一行", "第二行"]
    (tmp_path / "only-test").mkdir()
    (tmp_path / "only-test" / "test.csv").write_text("text,label\na,b\n")
    with pytest.raises(DataError, match="no training file"):
        read_corpus(tmp_path / "only-test")
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")


def test_tokenizer_training_round_trips(tmp_path, tiny_data_dir):
    from transformers import AutoTokenizer

    train_tokenizer(tiny_data_dir, tmp_path / "tok", vocab_size=3000, min_frequency=1)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tok.is_fast and tok.mask_token == "[MASK]" and tok.mask_token_id is not None and len(tok) <= 3000
    title = next(t for t in read_corpus(tiny_data_dir) if all("\u4e00" <= c <= "\u9fff" for c in t[:4]))
    assert tok.tokenize(title[:4]) == list(title[:4])  # every CJK character is its own token
    for text in read_corpus(tiny_data_dir):
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "").lower()
    with pytest.raises(OutputDirError, match="not empty"):
        train_tokenizer(tiny_data_dir, tmp_path / "tok", vocab_size=600)


# ---- command line -------------------------------------------------------------------------------------------------


def test_cli_pretrain_and_tokenizer(tmp_path, tiny_data_dir, arch, capsys):
    assert main(["tokenizer", "train", "--data", str(tiny_data_dir), "--output", str(tmp_path / "tok"),
                 "--vocab-size", "800", "--min-frequency", "1"]) == 0
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tiny_data_dir), "--config", arch, "--tokenizer", str(tmp_path / "tok"),
            "--output", str(out), "--max-steps", "3", "--max-length", "32", "--precision", "fp32", "--device", "cpu",
            "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fine-tune: textclf train --model" in printed and printed.count("pretrained encoder:") == 1
    assert (out / "model" / "model.safetensors").is_file()
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*args, "--resume", "auto"]) == 0  # no checkpoint of this run: starts over, over its own folder
    assert main([*args, "--resume", "auto", "--lr", "1e-3"]) == 2
    assert "holds a different run" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    ([], "pass --model NAME_OR_DIR"),
    (["--config", "small"], "needs a tokenizer folder"),
    (["--config", "small", "--mask-prob", "1.5"], "pretrain.mask_prob"),
    (["--model", "x", "--config", "small"], "give one of them"),
])
def test_cli_bad_input_exits_2_with_one_message(tmp_path, tiny_data_dir, extra, message, capsys):
    code = main(["pretrain", "--data", str(tiny_data_dir), "--output", str(tmp_path / "o"), *extra, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_missing_data_exits_2(tmp_path, capsys):
    code = main(["pretrain", "--data", str(tmp_path / "nope.txt"), "--model", "minilm", "--output",
                 str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_read_corpus_rejects_an_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no non-empty text"), pytest.warns(DataWarning):
        read_corpus(empty)


def test_pretrainer_needs_data_or_texts(tmp_path, arch):
    with pytest.raises(ConfigError, match="either data= .* or texts="):
        Pretrainer(None, output_dir=tmp_path, pretrain_config=PretrainConfig(architecture=arch))
    assert Path(arch).is_file()


def test_the_measurement_example_runs_end_to_end(tmp_path, tiny_data_dir, arch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("chinese_pretrain", Path(__file__).parents[1] / "examples" /
                                                  "chinese_pretrain.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    corpus = tmp_path / "corpus"
    for name in example.CORPORA:  # four "data sets", each the tiny one
        (corpus / name).mkdir(parents=True)
        (corpus / name / "train.csv").write_bytes((tiny_data_dir / "train.csv").read_bytes())
    results = tmp_path / "results.json"
    out = example.main(["--smoke", "--data", str(tiny_data_dir), "--corpus-root", str(corpus), "--architecture", arch,
                        "--tokenizer", resolve_model_name("minilm"), "--work", str(tmp_path / "work"),
                        "--results", str(results), "--precision", "fp32"])
    assert set(out["test_accuracy"]) == {"finetune_random_init", "finetune_pretrained", "baseline"}
    assert out["stages"]["pretrain"]["texts"] == 800 and out["cpu_minutes_pretrain_plus_finetunes"] > 0
    assert json.loads(results.read_text()) == out


def test_a_full_disk_while_pretraining_names_the_folder_and_the_step(tmp_path, monkeypatch):
    from textclf.train import checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) > 2:  # the first checkpoint's files are written; the second one hits the full disk
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                               '"No space left on device" })')
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    scratch = PretrainConfig(architecture="small", tokenizer=resolve_model_name("minilm"))
    trainer = Pretrainer(None, texts=CORPUS, output_dir=tmp_path / "pre", config=tiny_config(), progress=False,
                         pretrain_config=scratch)
    with pytest.raises(TrainingError, match=r"the disk holding .*pre is full: no space left while writing at "
                                            r"optimizer step 8; free some space"):
        trainer.fit()
    assert not list((tmp_path / "pre" / "checkpoints").glob(".textclf-*"))
    assert [p.name for p in (tmp_path / "pre" / "checkpoints").iterdir()] == ["step-000004"]


# ---- the shared loop: what fine-tuning has, pretraining has too ----------------------------------------------------


def _tiny_pretrainer(cls, run, arch):
    return cls(None, texts=CORPUS, output_dir=run, config=tiny_config(),
               pretrain_config=PretrainConfig(architecture=arch, tokenizer=resolve_model_name("minilm")),
               progress=False)


def test_a_non_finite_mlm_loss_stops_with_the_step_s_texts_dumped(tmp_path, arch):
    """One loop for both kinds of run: a NaN loss names the step and writes its texts, as in fine-tuning."""

    class Diverging(Pretrainer):
        def compute_loss(self, logits, targets):
            return super().compute_loss(logits, targets) * float("nan")

    run = tmp_path / "mlm"
    trainer = _tiny_pretrainer(Diverging, run, arch)
    with pytest.raises(TrainingError, match="optimizer step 1 .*the loss is nan in micro-batch 1 of 2"):
        trainer.fit()
    rows = [json.loads(line) for line in (run / "nonfinite-step-000001.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and {row["text"] for row in rows} <= set(CORPUS) and rows[0]["non_finite"]
    assert not (run / "model").exists() and not (run / "checkpoints").exists()


def test_pretraining_out_of_memory_names_the_knobs_and_leaves_no_empty_run(tmp_path, arch, monkeypatch):
    def out_of_memory(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Pretrainer, "training_step", out_of_memory)
    run = tmp_path / "mlm"
    trainer = _tiny_pretrainer(Pretrainer, run, arch)
    with pytest.raises(TrainingError, match="out of GPU memory at optimizer step 1 .*--batch-size .*--grad-accum"):
        trainer.fit()
    assert not run.exists()  # created by this call and nothing saved: the corrected command needs no --overwrite
