"""Checkpoints: the full training state, written atomically, rotated, and loaded without unpickling code.

A checkpoint folder ``OUTPUT/checkpoints/step-000050/`` holds:

* ``model.safetensors`` -- the model's weights;
* ``optimizer.pt`` -- the optimizer state (torch's format is unavoidable there; loaded ``weights_only=True``);
* ``rng.safetensors`` + ``trainer_state.json`` -- RNG states, step/epoch/position in the epoch, scheduler and
  GradScaler state, best metric, callback state (early stopping), the resolved config and the label map;
* ``rng-rank1.safetensors``, ... -- under distributed training, the RNG states of ranks 1, 2, ... (every rank
  draws its own dropout masks; ``rng.safetensors`` is rank 0's). Everything else is the same on every rank.

Each is written into a hidden temporary folder that is renamed into place only when complete, so a crash
mid-write leaves the previous checkpoint intact; ``trainer_state.json`` is written last and marks
completeness. ``latest_checkpoint`` skips anything incomplete. Old checkpoints are renamed out of sight before
they are deleted, so a crash mid-rotation never leaves a half-deleted folder that looks complete, and
``recover_bundles`` undoes a replacement of ``best/`` or ``last/`` cut between its two renames. Loading never
unpickles code, and a damaged or truncated file raises a :class:`~textclf.errors.TrainingError` naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import outputs
from ..config import read_json_object
from ..errors import TrainingError

STATE_FILE = "trainer_state.json"
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def write_atomically(final: Path, write) -> Path:
    """Call ``write(tmp_folder)``, fsync its files, then rename the folder to ``final`` (replacing it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = outputs.scratch(final, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    if final.exists():  # replace: move the old one aside first so a crash never leaves neither
        old = outputs.scratch(final, "old")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)
    return final


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rng: dict | list[dict], state: dict) -> Path:
    """Write one complete checkpoint atomically. ``state`` must be JSON-serialisable.

    ``rng`` is the RNG state of this process, or under distributed training a list of every rank's, by rank.
    """
    ranks = rng if isinstance(rng, list) else [rng]

    def write(tmp: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        other_ranks = {}
        for rank, rank_rng in enumerate(ranks[1:], 1):
            rng_tensors, other_ranks[str(rank)] = _split_rng(rank_rng)
            save_file(rng_tensors, str(tmp / rng_file(rank)))
        rng_tensors, rng_meta = _split_rng(ranks[0])
        save_file(rng_tensors, str(tmp / rng_file(0)))
        payload = {**state, "rng": rng_meta, **({"rng_other_ranks": other_ranks} if other_ranks else {}),
                   "complete": True}
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, ensure_ascii=False))

    return write_atomically(folder, write)


def rng_file(rank: int) -> str:
    return "rng.safetensors" if rank == 0 else f"rng-rank{rank}.safetensors"


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    device: torch.device, rank: int = 0) -> tuple[dict, dict]:
    """Restore weights (and optimizer) in place; return ``(state, rng)``. Damaged files raise a clear error.

    ``rng`` is the RNG state of distributed rank ``rank`` (the same rank of the run that wrote the checkpoint).
    """
    folder = Path(folder)
    state = read_state(folder)
    weights = _guarded(folder / "model.safetensors", load_file, device=str(device))
    optimizer_state = None
    if optimizer is not None:
        optimizer_state = _guarded(folder / "optimizer.pt", torch.load, map_location=device, weights_only=True)
    try:
        model.load_state_dict(weights)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or parameter groups of another model
        raise TrainingError(f"checkpoint {folder} does not fit this model ({str(exc).splitlines()[0]}); resume with "
                            "the model, head and freezing settings that wrote it") from None
    rng_meta = state.pop("rng")
    other_ranks = state.pop("rng_other_ranks", {})
    if rank:
        if str(rank) not in other_ranks:
            raise TrainingError(f"checkpoint {folder} holds no RNG state for rank {rank}: it was written by "
                                f"{len(other_ranks) + 1} process(es); resume with as many")
        rng_meta = other_ranks[str(rank)]
    rng = _join_rng(_guarded(folder / rng_file(rank), load_file), rng_meta)
    return state, rng


def read_state(folder: Path) -> dict:
    state = read_json_object(Path(folder) / STATE_FILE, TrainingError,
                             f"delete {folder} to resume from the previous checkpoint (from the start when it is "
                             "the only one)", what="checkpoint state", expected="the state of a run")
    if not state.get("complete"):
        raise TrainingError(f"checkpoint {folder} is incomplete; delete it to resume from the previous one (from the "
                            "start when it is the only one)")
    return state


def _guarded(path: Path, loader, *args, **kwargs):
    try:
        return loader(str(path), *args, **kwargs)
    except Exception as exc:  # safetensors/torch raise various types for truncated or foreign files
        raise TrainingError(f"checkpoint file {path} is damaged or truncated ({type(exc).__name__}: {exc}); "
                            f"delete {path.parent} to resume from the previous checkpoint (from the start when it "
                            "is the only one)") from None


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete or temporary folders are ignored)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for folder in checkpoint_dir.glob(f"{PREFIX}*"):
        if not folder.name[len(PREFIX):].isdigit():  # a user's copy (step-000002.bak) is not a checkpoint
            continue
        try:
            if json.loads((folder / STATE_FILE).read_text(encoding="utf-8")).get("complete"):
                found.append(folder)
        except (OSError, json.JSONDecodeError, AttributeError):  # AttributeError: a state file that is not a dict
            continue
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def rotate_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints.

    The best step's checkpoint is not kept apart: the best weights are already in ``best/``, and resuming needs only
    the newest checkpoint, so an older one would be about three models' worth of disk (weights and AdamW's two
    moments) that nothing reads.
    """
    found = list_checkpoints(checkpoint_dir)
    for folder in found[: max(0, len(found) - keep)]:
        _delete(folder)
    for leftover in outputs.scratch_glob(checkpoint_dir):  # from a crash mid-write or mid-delete
        shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """Delete the whole ``checkpoints/`` folder of a run that will never be resumed (a cross-validation fold)."""
    _delete(Path(checkpoint_dir))


def _delete(folder: Path) -> None:
    """Rename out of sight first: a crash mid-delete must not leave a half-deleted folder that looks complete."""
    trash = outputs.scratch(folder, "trash")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def recover_bundles(output_dir: Path, names: tuple[str, ...] = ("best", "last")) -> None:
    """Undo a replacement of ``best/`` or ``last/`` that a crash cut between its two renames.

    ``write_atomically`` moves the old folder to ``.textclf-old-NAME-PID`` before renaming the new one into place;
    if the process died in between, the old folder is the only complete copy and is moved back.
    """
    output_dir = Path(output_dir)
    for name in names:
        final = output_dir / name
        for old in outputs.scratch_glob(output_dir, name, "old"):
            if not final.exists():
                os.rename(old, final)
            else:
                shutil.rmtree(old, ignore_errors=True)
        for tmp in outputs.scratch_glob(output_dir, name, "tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


# RNG states mix tensors (torch, CUDA) with tuples (Python, NumPy): tensors go to safetensors, the rest to JSON.

def _split_rng(rng: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": rng["torch"]}
    for i, cuda_state in enumerate(rng.get("cuda", [])):
        tensors[f"cuda{i}"] = cuda_state
    name, keys, pos, has_gauss, cached = rng["numpy"]
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    version, internal, gauss = rng["python"]
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss],
            "num_cuda": len(rng.get("cuda", []))}
    return tensors, meta


def _join_rng(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    name, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().view(np.uint32)
    version, internal, gauss = meta["python"]
    rng = {"torch": tensors["torch"], "numpy": (name, keys, pos, has_gauss, cached),
           "python": (version, tuple(internal), gauss)}
    if meta["num_cuda"]:
        rng["cuda"] = [tensors[f"cuda{i}"] for i in range(meta["num_cuda"])]
    return rng
