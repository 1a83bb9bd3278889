"""What the console says: one message for each thing worth saying, in textclf's words, and none of transformers'
progress bars or load reports."""

from __future__ import annotations

import os
import signal

import pytest

from textclf import cli
from textclf.config import PretrainConfig, TrainConfig
from textclf.deploy.export import size_change
from textclf.model.classifier import load_encoder, load_tokenizer
from textclf.train.pretrain import Pretrainer
from textclf.train.trainer import Trainer


def test_loading_a_model_shows_no_progress_bars_or_load_reports(tiny_model_dir, capfd):
    load_encoder(str(tiny_model_dir))
    load_tokenizer(str(tiny_model_dir))
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "UNEXPECTED" not in out + err


def test_continuing_mlm_from_a_plain_encoder_says_so_once_in_its_own_words(tiny_model_dir, tiny_data, tmp_path,
                                                                        capfd):
    config = TrainConfig(max_steps=1, batch_size=16, max_length=32, device="cpu", precision="fp32")
    Pretrainer(str(tiny_model_dir), texts=tiny_data.train.texts[:32], output_dir=tmp_path / "mlm", config=config,
               pretrain_config=PretrainConfig(), progress=False)
    out, err = capfd.readouterr()
    assert "weights of the masked-language head are new" in out
    assert not any(noise in out + err for noise in ("seem corrupted", "MISSING", "Loading weights"))


def _train_args(tiny_model_dir, tiny_data_dir, out, *extra):
    return ["train", "--data", str(tiny_data_dir), "--model", str(tiny_model_dir), "--output", str(out),
            "--max-steps", "4", "--max-length", "32", "--batch-size", "16", "--device", "cpu", "--quiet", *extra]


def test_an_interrupted_train_command_names_its_resume_command_once(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                   capsys, monkeypatch):
    original = Trainer.optimizer_step

    def step_then_ctrl_c(self):
        original(self)
        if self.state.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in the terminal: finish the step, checkpoint, stop

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_ctrl_c)
    out = tmp_path / "run"
    assert cli.main(_train_args(tiny_model_dir, tiny_data_dir, out, "--precision", "fp32")) == 128 + signal.SIGINT
    printed = capsys.readouterr()
    assert (printed.out + printed.err).count("--resume auto") == 1
    assert f"--output {out}" in printed.err and "--overwrite" not in printed.err


def test_emulated_bf16_is_a_one_line_warning_not_a_code_location(tiny_model_dir, tiny_data_dir, tmp_path, capsys,
                                                                 monkeypatch):
    import textclf.runtime

    monkeypatch.setattr(textclf.runtime, "cpu_supports_bf16", lambda: False)
    assert cli.main(_train_args(tiny_model_dir, tiny_data_dir, tmp_path / "run", "--precision", "bf16",
                                "--max-steps", "1")) == 0
    err = capsys.readouterr().err
    assert "textclf train: warning: precision bf16 on a CPU without native bf16" in err
    assert "RuntimeWarning" not in err and "warnings.warn" not in err


@pytest.mark.parametrize(("size", "reference", "said"), [(25, 100, "4.00x smaller"), (102, 100, "1.02x larger"),
                                                         (100, 100, "the same size")])
def test_export_size_is_described_honestly(size, reference, said):
    assert size_change(size, reference) == said


def test_a_first_run_says_how_long_it_will_take(tiny_model_dir, tiny_data, tmp_path, capsys):
    from textclf.train.callbacks import TimeEstimate

    config = TrainConfig(max_steps=7, batch_size=8, max_length=32, device="cpu", precision="fp32")
    Trainer(str(tiny_model_dir), tiny_data, tmp_path / "run", config, progress=False,
            callbacks=[TimeEstimate(after_steps=3)]).fit()
    said = [line for line in capsys.readouterr().out.splitlines() if "min of training left" in line]
    assert len(said) == 1 and said[0].startswith("about 0:") and "(4 optimizer steps at " in said[0]
