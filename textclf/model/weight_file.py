"""Read a safetensors weights file straight into a model's own tensors: no memory map, no second copy.

safetensors' loader maps the file and makes a tensor of every entry. The mapped pages count in the process's
resident memory until the file is closed, so loading into a model that already exists (``from_pretrained``
builds it from its config first; the trainer reloads ``best/`` at the end of a run) peaks at the model plus the
whole file: 391 MB more for a BERT-base, 87 MB for MiniLM. Plain file reads into each parameter's memory peak at
the model alone (plus one entry, when an entry's dtype differs from its parameter's).

The format (https://github.com/huggingface/safetensors): 8 bytes of header length (little-endian), a JSON header
mapping each name to its ``dtype``, ``shape`` and ``data_offsets`` (start and end byte after the header), then the
raw little-endian data.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class WeightFileError(ValueError):
    """The file is not a readable safetensors file (damaged, truncated, or a dtype textclf does not read)."""


@dataclass(frozen=True)
class Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offsets in the file
    end: int


def read_entries(path: Path) -> dict[str, Entry]:
    """The tensors a safetensors file holds, by name, from its header."""
    try:
        with open(path, "rb") as file:
            header_size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(header_size))
        file_size = path.stat().st_size
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = (8 + header_size + offset for offset in info["data_offsets"])
            entries[name] = Entry(_DTYPES[info["dtype"]], tuple(info["shape"]), start, end)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightFileError(f"cannot read its header ({type(exc).__name__}: {exc})") from None
    if any(entry.end > file_size for entry in entries.values()):
        raise WeightFileError(f"it is truncated: {file_size} bytes, the header describes more")
    return entries


def read_into(path: Path, entries: dict[str, Entry], targets: dict[str, torch.Tensor]) -> None:
    """Fill ``targets[name]`` with entry ``name`` of the file, for every name in ``targets``.

    The caller has checked that the shapes agree. A contiguous CPU target of the entry's dtype is read into
    directly; any other is read into a temporary and copied (cast to the target's dtype).
    """
    if sys.byteorder != "little":  # the file's bytes are little-endian: let safetensors convert them
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights, torch.no_grad():
            for name, target in targets.items():
                target.copy_(weights.get_tensor(name))
        return
    with open(path, "rb") as file, torch.no_grad():
        for name, target in sorted(targets.items(), key=lambda item: entries[item[0]].start):
            entry = entries[name]
            direct = target.dtype == entry.dtype and target.is_contiguous() and target.device.type == "cpu"
            destination = target.detach() if direct else torch.empty(entry.shape, dtype=entry.dtype)
            raw = destination.reshape(-1).view(torch.uint8)
            if raw.numel() != entry.end - entry.start:
                raise WeightFileError(f"{name} takes {entry.end - entry.start} bytes in the file, its shape and "
                                      f"dtype {raw.numel()}")
            file.seek(entry.start)
            if file.readinto(memoryview(raw.numpy())) != raw.numel():
                raise WeightFileError(f"it is truncated inside {name}")
            if not direct:
                target.copy_(destination)
