"""``textclf`` command line that can stop at a chosen point, for tests that kill a real training process.

Usage: ``python tests/helpers/pausing_cli.py train ...`` (the arguments of ``textclf``). When the environment
variable ``TEXTCLF_TEST_PAUSE`` names a point, the process prints ``PAUSED <point>`` on stdout when it gets
there and waits for the test to send it a signal (SIGKILL, or SIGTERM that the trainer handles). Points:

* ``micro:S:P``   -- after the forward/backward of micro-batch ``P`` (0-based) of optimizer step ``S`` (1-based),
  i.e. inside an accumulation window when ``P`` is not its last micro-batch;
* ``after_step:S`` -- right after optimizer step ``S`` updated the weights, before the step is counted;
* ``eval:S``      -- in the first batch of the dev evaluation that follows optimizer step ``S``;
* ``save:S``      -- while the checkpoint of step ``S`` is written: its weights and optimizer state are already
  in the temporary folder, the RNG states and ``trainer_state.json`` not yet.

Nothing in textclf is changed beyond wrapping those methods; the run is otherwise exactly ``textclf train``.
One torch thread keeps the arithmetic (and so the weights) independent of the machine's core count.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import textclf.train.checkpoint as checkpoint  # noqa: E402
from textclf import cli  # noqa: E402
from textclf.train.trainer import Trainer  # noqa: E402

POINT = os.environ.get("TEXTCLF_TEST_PAUSE", "")
KIND, *NUMBERS = POINT.split(":") if POINT else ("",)
NUMBERS = [int(n) for n in NUMBERS]
WAIT_SECONDS = 60
current: dict = {"trainer": None, "micro": 0, "paused": False}


def pause(trainer: Trainer | None) -> None:
    """Announce the point once, then wait for the test's signal (SIGKILL ends us; SIGTERM sets the flag)."""
    if current["paused"]:
        return
    current["paused"] = True
    print(f"PAUSED {POINT}", flush=True)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if trainer is not None and trainer._interrupt_signal is not None:
            return
        time.sleep(0.01)
    print(f"pausing_cli: no signal within {WAIT_SECONDS}s at {POINT}", file=sys.stderr, flush=True)
    os._exit(3)


original_training_step = Trainer.training_step
original_optimizer_step = Trainer.optimizer_step
original_evaluation_step = Trainer.evaluation_step
original_save_file = checkpoint.save_file


def training_step(self, batch):
    current["trainer"] = self
    output = original_training_step(self, batch)
    if KIND == "micro" and [self.state.global_step + 1, current["micro"]] == NUMBERS:
        pause(self)
    current["micro"] += 1
    return output


def optimizer_step(self):
    original_optimizer_step(self)
    current["micro"] = 0  # checkpoints are written at step boundaries, so a resumed process starts at 0 too
    if KIND == "after_step" and [self.state.global_step + 1] == NUMBERS:
        pause(self)


def evaluation_step(self, batch):
    if KIND == "eval" and [self.state.global_step] == NUMBERS:
        pause(self)
    return original_evaluation_step(self, batch)


def save_file(tensors, filename, *args, **kwargs):
    if KIND == "save" and filename.endswith("rng.safetensors") and f".textclf-tmp-step-{NUMBERS[0]:06d}-" in filename:
        pause(current["trainer"])
    return original_save_file(tensors, filename, *args, **kwargs)


Trainer.training_step = training_step
Trainer.optimizer_step = optimizer_step
Trainer.evaluation_step = evaluation_step
checkpoint.save_file = save_file

if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(cli.main(sys.argv[1:]))
