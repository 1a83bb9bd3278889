"""Write ``tests/data/legacy/``: a run folder of the 0.x layout, kept so later releases prove they still load it.

Run from the repository root, with the release whose folders should stay loadable::

    python tests/helpers/make_legacy_run.py

It writes a 1-layer, 16-wide BERT with a 600-piece WordPiece vocabulary trained on ``tests/data/tiny`` (so the
folder is a few hundred KB, not the MB of a 30k vocabulary) and a 4-step training run on that data with a checkpoint
at step 2. Paths are stored relative to the repository root, as a user who runs ``textclf train`` there would
have them. ``tests/test_legacy_run.py`` loads ``best/``, predicts, and resumes the step-2 checkpoint to step 4,
comparing the weights with the ``last/`` written here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEGACY = Path("tests/data/legacy")
ENCODER, RUN, DATA = LEGACY / "encoder", LEGACY / "run", Path("tests/data/tiny")
CONFIG = dict(max_steps=4, batch_size=16, save_steps=2, eval_steps=2, keep_checkpoints=1, lr=5e-3, max_length=32,
              device="cpu", precision="fp32", seed=3, log_steps=1)


def train_config():
    from textclf import TrainConfig

    return TrainConfig(**CONFIG)


def main() -> int:
    import torch
    from transformers import BertConfig, BertModel

    import textclf
    from textclf.train.pretrain import train_tokenizer

    if Path.cwd().resolve() != ROOT:
        print("run this from the repository root", file=sys.stderr)
        return 2
    shutil.rmtree(LEGACY, ignore_errors=True)
    tokenizer = train_tokenizer(DATA, ENCODER, vocab_size=600)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(ENCODER)
    textclf.Trainer(str(ENCODER), str(DATA), RUN, train_config(), progress=False).fit()
    (RUN / ".textclf").unlink(missing_ok=True)  # folders of 0.x releases carry no marker
    shutil.rmtree(RUN / "runs")  # TensorBoard event files: large, binary and not what a later release reads
    print(f"wrote {LEGACY}: {sum(f.stat().st_size for f in LEGACY.rglob('*') if f.is_file()) / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
