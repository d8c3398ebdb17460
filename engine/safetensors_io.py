"""safetensors files read and written one tensor at a time, with bounded memory.

The format (huggingface/safetensors, docs "Format"): an 8-byte little-endian header
length, a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}} padded with spaces to a multiple of 8 bytes, then the
raw little-endian tensor bytes, offsets relative to the end of the header.

``SafetensorsReader`` reads each tensor with plain file reads into a fresh buffer:
no memory map, so pages of a large checkpoint never pile up in the process's
resident set (a mapped file counts there for as long as it stays mapped).
``SafetensorsWriter`` writes the header first from a plan of (name, dtype, shape)
and then each tensor as it is produced, hashing the bytes as they go out, so a
file of any size is written with one tensor in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20


class SafetensorsError(ValueError):
    """A file that is not valid safetensors, or a tensor that is not what was planned."""


def _nbytes(dtype: torch.dtype, shape) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class SafetensorsReader:
    """Tensor names, dtypes and shapes of one file, and each tensor read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SafetensorsError(f"{self.path} is not a safetensors file (too short)")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                raise SafetensorsError(f"{self.path} is not a safetensors file (header {size} B)")
            try:
                header = json.loads(f.read(size))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SafetensorsError(f"{self.path}: unreadable safetensors header ({exc})") from None
        self.data_start = 8 + size
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        file_size = self.path.stat().st_size
        for name, entry in header.items():
            dtype = DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype "
                                       f"{entry.get('dtype')!r}")  # fmt: skip
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
            if end - begin != _nbytes(dtype, shape) or self.data_start + end > file_size:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} ({entry['dtype']} {list(shape)}) does not fit "
                    "its data offsets or the file is truncated"
                )
            self._entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def read(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self._entries[name]
        return self._read_bytes(begin, end - begin).view(dtype).reshape(shape)

    def read_rows(self, name: str, rows: list[int]) -> torch.Tensor:
        """Only the given rows of a tensor (dim 0), each read on its own."""
        dtype, shape, begin, _ = self._entries[name]
        row_bytes = _nbytes(dtype, shape[1:])
        parts = [self._read_bytes(begin + r * row_bytes, row_bytes) for r in rows]
        return torch.stack([p.view(dtype).reshape(shape[1:]) for p in parts])

    def _read_bytes(self, offset: int, count: int) -> torch.Tensor:
        buf = torch.empty(count, dtype=torch.uint8)
        view = memoryview(buf.numpy()).cast("B")
        with open(self.path, "rb") as f:
            f.seek(self.data_start + offset)
            done = 0
            while done < count:
                n = f.readinto(view[done:])
                if not n:
                    raise SafetensorsError(f"{self.path}: file ends inside tensor data")
                done += n
        return buf


class SafetensorsWriter:
    """Writes planned tensors in plan order; ``close()`` returns the file's sha256."""

    def __init__(
        self,
        path: str | os.PathLike,
        plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self._plan = [(name, dtype, tuple(shape)) for name, dtype, shape in plan]
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, dtype, shape in self._plan:
            if name in header:
                raise SafetensorsError(f"tensor {name!r} is planned twice")
            size = _nbytes(dtype, shape)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}  # fmt: skip
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self._sha = hashlib.sha256()
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._emit(struct.pack("<Q", len(text)) + text)
        self._next = 0
        self.nbytes = 8 + len(text) + offset

    def _emit(self, data) -> None:
        self._file.write(data)
        self._sha.update(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._plan):
            raise SafetensorsError(f"tensor {name!r} was not planned")
        want, dtype, shape = self._plan[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise SafetensorsError(
                f"expected tensor {want!r} ({dtype} {list(shape)}) next, got {name!r} "
                f"({tensor.dtype} {list(tensor.shape)})"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._emit(memoryview(data.numpy()))
        self._next += 1

    def discard(self) -> None:
        """Close without the completeness check (the build failed; the file goes)."""
        self._file.close()

    def close(self) -> str:
        """Flush to disk; every planned tensor must have been written."""
        try:
            if self._next != len(self._plan):
                missing = [n for n, _, _ in self._plan[self._next : self._next + 3]]
                raise SafetensorsError(f"{self.path}: tensors never written: {missing} ...")
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        return self._sha.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardedSafetensorsWriter:
    """A plan written across files of at most ``max_shard_bytes`` each (HF's layout:
    ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``), tensor by tensor in plan order."""

    def __init__(self, directory: str | os.PathLike, plan, max_shard_bytes: int = 5 << 30,
                 metadata: dict[str, str] | None = None):  # fmt: skip
        self.directory = Path(directory)
        shards, current, size = [], [], 0
        for entry in plan:
            n = _nbytes(entry[1], entry[2])
            if current and size + n > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(entry)
            size += n
        shards.append(current)
        count = len(shards)
        self.names = (["model.safetensors"] if count == 1 else
                      [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])  # fmt: skip
        self._shards = shards
        self._metadata = metadata
        self._index = -1
        self._left = 0
        self._writer: SafetensorsWriter | None = None
        self.digests: dict[str, str] = {}
        self.weight_map = {e[0]: self.names[i] for i, s in enumerate(shards) for e in s}
        self.total_size = sum(_nbytes(e[1], e[2]) for e in plan)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._left == 0:
            self._next_shard()
        self._writer.write(name, tensor)
        self._left -= 1

    def _next_shard(self) -> None:
        if self._writer is not None:
            self.digests[self.names[self._index]] = self._writer.close()
        self._index += 1
        if self._index >= len(self._shards):
            raise SafetensorsError("more tensors written than planned")
        self._writer = SafetensorsWriter(self.directory / self.names[self._index],
                                         self._shards[self._index], self._metadata)  # fmt: skip
        self._left = len(self._shards[self._index])

    def close(self) -> dict[str, str]:
        """Closes the last shard (every planned tensor must have been written) and
        writes the index when there are several; returns {file name: sha256}."""
        while self._index < len(self._shards) - 1:
            self._next_shard()  # empty shards cannot happen, but a short write is caught here
        if self._writer is not None:
            self.digests[self.names[self._index]] = self._writer.close()
        if len(self.names) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            (self.directory / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2) + "\n"
            )
        return self.digests

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.discard()
