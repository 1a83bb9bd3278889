"""``pausing_cli.py`` for processes started by ``torchrun``: the same pause points, plus the process id.

Usage: ``torchrun --nproc-per-node 2 tests/helpers/ddp_pausing.py train ...`` with ``TEXTCLF_TEST_PAUSE`` set
as for ``pausing_cli.py``. Every rank prints ``PID <pid> rank=<rank>``, then ``PAUSED <point>``, when it gets
there. torchrun starts its workers in sessions of their own, so a test that simulates a crashed machine kills
torchrun and then each worker by these process ids.
"""

from __future__ import annotations

import os
import sys

import pausing_cli  # tests/helpers is sys.path[0] when this file is run as a script

original_pause = pausing_cli.pause


def pause(trainer) -> None:
    if not pausing_cli.current["paused"]:
        print(f"PID {os.getpid()} rank={os.environ.get('RANK', '0')}", flush=True)
    original_pause(trainer)


pausing_cli.pause = pause  # the patched Trainer methods look the name up at call time

if __name__ == "__main__":
    pausing_cli.torch.set_num_threads(1)
    sys.exit(pausing_cli.cli.main(sys.argv[1:]))
