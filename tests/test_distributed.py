"""Distributed training under real ``torchrun --nproc-per-node 2`` processes, on CPU with gloo.

* Two processes with 4 rows x 2 accumulation each train exactly as one process with batches of 16: same rows per
  optimizer step (rank ``r``'s ``k``-th batch is batch ``k * 2 + r`` of the epoch), same mean loss, so the final
  weights, the logged losses and the gradient norms agree within float tolerance. One output folder, written by
  rank 0; dev metrics count each of the 49 dev rows exactly once (49 does not split evenly over 2 ranks, so a
  sampler that pads would count a row twice).
* A two-process run killed mid-epoch (every process, as if the machine died) and resumed with ``--resume auto``
  ends bit for bit where the uninterrupted two-process run ends: weights, metrics, log. Dropout is on, so each
  rank's own RNG stream must be saved and restored; length grouping, gradient accumulation with a short last
  window and the wrap-around that gives both ranks equal batch counts are all in play.

A plain single process must not call ``torch.distributed`` at all: the one-process reference run below runs with
those functions replaced by ones that fail.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_encoder
from safetensors.torch import load_file

from textclf import outputs
from textclf.data.collate import RandomBatches, _shard
from textclf.errors import TrainingError
from textclf.runtime import rng_state, seed_everything
from textclf.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
PAUSING = Path(__file__).parent / "helpers" / "ddp_pausing.py"

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is needed")

COMMON = ["--max-length", "32", "--device", "cpu", "--precision", "fp32", "--quiet"]
# 192 rows: 48 batches of 4 = 24 per rank = 12 optimizer steps of 2 x 2 x 4 = 16 rows, the same 16 as one process's
# batch of 16. Dropout 0 everywhere, so a step is a function of its rows only.
EQUIVALENCE = ["--epochs", "2", "--no-group-by-length", "--lr", "1e-3", "--warmup-ratio", "0.1", "--pooling", "cls",
               "--dropout", "0", "--seed", "3", "--log-steps", "4", "--eval-batch-size", "16", *COMMON]
# 200 rows in batches of 8: 25 batches, wrapped to 26 = 13 per rank; 2 per step = 7 steps per epoch, the last of one
# micro-batch. Checkpoints and evaluations every 3 steps; the kill lands in step 8, which resumes from step 6.
RESUME = ["--epochs", "2", "--batch-size", "8", "--grad-accum", "2", "--eval-steps", "3", "--save-steps", "3",
          "--lr", "5e-3", "--warmup-ratio", "0.1", "--pooling", "mean", "--dropout", "0.1", "--seed", "7",
          "--log-steps", "2", *COMMON]
KILL_POINT = "micro:8:0"


# ================================================================================================== launching


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "TOKENIZERS_PARALLELISM": "false", **extra}


def _torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (standalone: a free rendezvous port of its own)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def _train_args(data: Path, model: Path, out: Path, recipe: list[str], *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", str(model), "--output", str(out), *recipe, *extra]


def run_torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(_torchrun(*args), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc


def run_two_nodes(args: list[str], timeout: float = 240) -> str:
    """The same job as two "nodes" of one process each, as on two machines: ``--nnodes 2``, one ``--node-rank`` each.

    Static rendezvous (a master address and a node rank), as a cluster scheduler launches it. The dynamic c10d
    rendezvous is not used: with it, the agent that hosts the store may exit as soon as the job ends while the
    other agent still polls that store, and the polling agent then fails a finished job (a teardown race in
    torch.distributed.elastic, not in the training)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--master-addr", "127.0.0.1", "--master-port", str(port)]
    nodes = [subprocess.Popen([*launch, "--node-rank", str(rank), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT) for rank in range(2)]
    results = [node.communicate(timeout=timeout) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, results):
        assert node.returncode == 0, f"a node failed ({node.returncode}):\n{stdout}\n{stderr[-6000:]}"
    return "".join(stdout for stdout, _ in results)


def forbid_distributed(monkeypatch) -> None:
    """Make every torch.distributed function that joins, needs or tears down a process group fail.

    (``is_initialized`` stays: transformers itself asks it while loading a model.)
    """
    def forbidden(*args, **kwargs):
        raise AssertionError("a single-process run called torch.distributed")

    for name in ("init_process_group", "destroy_process_group", "all_reduce", "barrier", "broadcast",
                 "broadcast_object_list", "gather_object", "all_gather_object", "new_group"):
        monkeypatch.setattr(torch.distributed, name, forbidden)


# ================================================================================================== fixtures


@pytest.fixture(scope="module")
def nodrop_model(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("ddp-bert-nodrop"), dropout=0.0)


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory, tiny_data_dir) -> Path:
    """192 training rows (divisible by every batch size used here), 49 dev rows (odd), 50 test rows."""
    folder = tmp_path_factory.mktemp("ddp-data")
    for name, rows in (("train", 192), ("dev", 49), ("test", 50)):
        with open(tiny_data_dir / f"{name}.csv", encoding="utf-8", newline="") as handle:
            records = list(csv.reader(handle))
        with open(folder / f"{name}.csv", "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows(records[: rows + 1])  # + the header
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def train_logs(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "train/loss" in r]


def log_records(out: Path) -> list[dict]:
    volatile = {"time", "train/samples_per_second", "train/tokens_per_second"}
    return [{k: v for k, v in json.loads(line).items() if k not in volatile}
            for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]


# ================================================================================================== the tests


def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path, nodrop_model, ddp_data,
                                                                       monkeypatch, capsys):
    from textclf import cli
    from textclf.train.trainer import Trainer

    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp = run_torchrun(["-m", "textclf", *_train_args(ddp_data, nodrop_model, ddp_out, EQUIVALENCE,
                                                       "--batch-size", "4", "--grad-accum", "2")])

    # The reference: one process, batches of 16, with every torch.distributed function made to fail.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with monkeypatch.context() as patch:
        forbid_distributed(patch)
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(name, raising=False)
        code = cli.main(_train_args(ddp_data, nodrop_model, single_out, EQUIVALENCE, "--batch-size", "16"))
    torch.set_num_threads(threads)
    single_stdout = capsys.readouterr().out
    assert code == 0
    assert "global batch 16 (16 x 1 device(s) x 1 accumulation)" in single_stdout

    # textclf train reports the effective global batch, and only rank 0 talks.
    assert ddp.stdout.count("global batch 16 (4 x 2 device(s) x 2 accumulation), 24 optimizer steps") == 1, ddp.stdout
    assert ddp.stdout.count("best model:") == 1 and "Traceback" not in ddp.stderr

    # One output folder, written once: the same layout as the single process, no leftovers, one event file.
    assert sorted(p.name for p in ddp_out.iterdir()) == sorted(p.name for p in single_out.iterdir())
    assert not list(ddp_out.rglob(".textclf-*"))
    assert len(list((ddp_out / "runs").iterdir())) == 1
    assert [r["step"] for r in log_records(ddp_out)] == [r["step"] for r in log_records(single_out)]
    for checkpoint in ckpt.list_checkpoints(ddp_out / "checkpoints"):  # every rank's RNG, rank 0's in rng.safetensors
        assert {p.name for p in checkpoint.glob("rng*")} == {"rng.safetensors", "rng-rank1.safetensors"}

    # Same optimizer steps: weights, losses (all ranks' rows) and gradient norms agree.
    ddp_weights, single_weights = weights(ddp_out / "last"), weights(single_out / "last")
    assert ddp_weights.keys() == single_weights.keys()
    worst = max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in ddp_weights)
    assert worst < 1e-5, f"largest weight difference {worst:.3g}"
    initial = {"bert." + k: v for k, v in weights(nodrop_model).items()}  # best/ and last/ load as BERT classifiers
    moved = max((ddp_weights[k] - v).abs().max().item() for k, v in initial.items() if k in ddp_weights)
    assert moved > 1e-3  # the weights really moved, by far more than the tolerance
    ddp_logs, single_logs = train_logs(ddp_out), train_logs(single_out)
    assert [r["step"] for r in ddp_logs] == [r["step"] for r in single_logs]
    for key in ("train/loss", "train/grad_norm", "train/lr", "train/epoch"):
        assert [r[key] for r in ddp_logs] == pytest.approx([r[key] for r in single_logs], rel=1e-4), key

    # Metrics on exactly the dev rows: 49 rows, each counted once, as a plain evaluation of the same model counts.
    metrics, single_metrics = (json.loads((o / "metrics.json").read_text()) for o in (ddp_out, single_out))
    assert metrics["dev"]["num_rows"] == 49 and metrics["test"]["num_rows"] == 50
    assert len(metrics["history"]) == len(single_metrics["history"]) == 2
    assert [h["loss"] for h in metrics["history"]] == pytest.approx([h["loss"] for h in single_metrics["history"]],
                                                                    rel=1e-4)
    from textclf.data.readers import load_dataset

    dev = load_dataset(ddp_data).dev
    with monkeypatch.context() as patch:
        forbid_distributed(patch)
        report = Trainer.from_pretrained(ddp_out / "best", device="cpu", precision="fp32").evaluate(dev)
    assert report.confusion_matrix == metrics["dev"]["confusion_matrix"]
    assert report.loss == pytest.approx(metrics["dev"]["loss"], rel=1e-5)

    # Rank 0 alone decides whether the folder may be used, and every rank gets its answer: the same command again
    # is refused cleanly by all processes (no rank races rank 0's writes, none waits forever), and nothing changes.
    before = sorted((p.relative_to(ddp_out), p.stat().st_mtime_ns) for p in ddp_out.rglob("*"))
    again = subprocess.run(_torchrun("-m", "textclf", *_train_args(ddp_data, nodrop_model, ddp_out, EQUIVALENCE,
                                                                   "--batch-size", "4", "--grad-accum", "2")),
                           capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=240)
    assert again.returncode != 0 and "already holds a run" in again.stderr
    assert "]: Traceback" not in again.stderr  # no worker died of an exception ("[rank1]: Traceback ...")
    assert sorted((p.relative_to(ddp_out), p.stat().st_mtime_ns) for p in ddp_out.rglob("*")) == before


def _wait_until_gone(pids: list[int], timeout: float = 60.0) -> None:
    """Wait until every killed worker has exited (a zombie has: it holds no lock and no port). Resuming while one
    still runs would meet its run lock and its rendezvous port, not the machine failure the test is about."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/status", encoding="utf-8") as status:
                    if any(line.startswith("State:") and "Z" in line.split()[1] for line in status):
                        break
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)


def _wait_until_unlocked(lock: Path, timeout: float = 120.0) -> None:
    """Wait until no process holds the run lock ``lock``, or fail naming the processes that still hold it open.

    ``_wait_until_gone`` sees a worker's main thread turn zombie, which can happen before its other threads have
    exited, and the lock is released only when the last of them is gone: on a loaded machine that can outlast the
    resume's own short wait (outputs.LOCK_WAIT_SECONDS), which is there for a scheduler's restart, not for a test
    that kills and resumes within a second. A holder that is not one of the killed workers would be a real stale
    lock, hence the names.
    """
    import fcntl

    deadline = time.monotonic() + timeout
    with open(lock, "a+", encoding="utf-8") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    holders = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == str(lock.resolve()) and fd.parts[2] != str(os.getpid()):
                pid = fd.parts[2]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                holders.append(f"PID {pid} ({cmdline.strip()[:200]})")
        except OSError:
            continue
    pytest.fail(f"the run lock {lock} is still held {timeout:.0f} s after the kill, by: {holders or 'unknown'}")


def test_two_process_run_killed_and_resumed_matches_the_uninterrupted_run(tmp_path, tiny_model_dir, tiny_data_dir):
    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"
    run_torchrun(["-m", "textclf", *_train_args(tiny_data_dir, tiny_model_dir, reference_out, RESUME)])

    # Every process dies at once, as with a lost machine: no signal handler, no last checkpoint.
    killed = subprocess.Popen(_torchrun(str(PAUSING), *_train_args(tiny_data_dir, tiny_model_dir, out, RESUME)),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                              env=_env(TEXTCLF_TEST_PAUSE=KILL_POINT), start_new_session=True)
    worker_pids, paused, lines = [], 0, []
    try:
        for line in killed.stdout:
            lines.append(line)
            if line.startswith("PID "):
                worker_pids.append(int(line.split()[1]))
            paused += line.startswith("PAUSED")
            if paused == 2:
                break
        assert paused == 2, "the two ranks did not both reach the pause point:\n" + "".join(lines)
    finally:
        killed.kill()  # torchrun first, so it cannot react; then its workers, which run in sessions of their own
        for pid in worker_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed.wait(timeout=60)
        _wait_until_gone(worker_pids)  # a loaded machine takes a while to tear down a killed worker
        _wait_until_unlocked(out / outputs.LOCK_FILE)
    assert ckpt.latest_checkpoint(out / "checkpoints").name == ckpt.checkpoint_name(6)

    # Resumed as a two-node job (one process per node): each rank's state is keyed by its RANK, so only the number
    # of processes has to match, not how they are launched.
    resumed = run_two_nodes(["-m", "textclf", *_train_args(tiny_data_dir, tiny_model_dir, out, RESUME,
                                                           "--resume", "auto")])
    assert resumed.count(f"resuming from {out / 'checkpoints' / ckpt.checkpoint_name(6)}") == 1

    for name in ("last", "best"):
        a, b = weights(reference_out / name), weights(out / name)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}/ differs from the uninterrupted run in {different[:5]}"
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference_out / "metrics.json").read_text())
    assert log_records(out) == log_records(reference_out)
    assert not list((out / "checkpoints").glob(".*")), "temporary folders were left behind"


# ================================================================================================== in-process pieces


def test_rank_batches_together_are_the_big_batch_of_one_process():
    """Step ``k`` of ``W`` ranks with batches of ``B`` covers the rows of one process's ``k``-th batch of ``W * B``."""
    world, size = 3, 4
    single = RandomBatches(96, world * size, seed=5).epoch_batches(2)
    ranks = [RandomBatches(96, size, seed=5, rank=r, world_size=world).epoch_batches(2) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    for k, big in enumerate(single):
        assert sorted(i for r in ranks for i in r[k]) == sorted(big)


def test_fewer_batches_than_ranks_still_give_every_rank_one():
    batches = [[0, 1], [2, 3]]
    shards = [_shard(batches, rank, 4, even=True) for rank in range(4)]
    assert shards == [[[0, 1]], [[2, 3]], [[0, 1]], [[2, 3]]]


def test_every_rank_has_its_own_rng_streams():
    seed_everything(11)
    plain = torch.rand(4)
    seed_everything(11, rank=0)
    assert torch.equal(torch.rand(4), plain)  # rank 0 draws what a single process draws
    seed_everything(11, rank=1)
    assert not torch.equal(torch.rand(4), plain)


def test_checkpoint_keeps_the_rng_state_of_every_rank(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    states = []
    for rank in range(3):
        seed_everything(5, rank)
        states.append(rng_state())
    folder = ckpt.save_checkpoint(tmp_path / "step-000001", model, optimizer, states, {"train_state": {}})
    assert sorted(p.name for p in folder.glob("rng*")) == ["rng-rank1.safetensors", "rng-rank2.safetensors",
                                                           "rng.safetensors"]
    for rank in range(3):
        _, rng = ckpt.load_checkpoint(folder, model, optimizer, torch.device("cpu"), rank=rank)
        assert torch.equal(rng["torch"], states[rank]["torch"])
        assert rng["python"] == states[rank]["python"]
    with pytest.raises(TrainingError, match="written by 3 process"):
        ckpt.load_checkpoint(folder, model, optimizer, torch.device("cpu"), rank=3)
