"""Safetensors read and written one tensor at a time, so a checkpoint larger than memory converts.

The format is a little-endian u64 header length, a JSON header ({name: {dtype, shape, data_offsets}}, plus an
optional "__metadata__" of strings) and the tensors' bytes. The reader takes each tensor with a positioned read
(no memory map: what stays resident is only the tensors a caller holds); the writer lays out the header from the
shapes it is promised, then appends each tensor's bytes in that order into a temp file renamed into place at the end.
Nothing in a file is executed: the header is JSON, the rest is raw numbers.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from typing import Any

import torch

from chameleon_lite.errors import ConfigError
from chameleon_lite.files import read_json

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20  # the safetensors library's own bound on the JSON header


class SafetensorsReader:
    """The tensors of one safetensors file, each read when asked for."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ConfigError(f"{path}: weights file not found") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot open ({e.strerror or e})") from None
        try:
            self._parse()
        except BaseException:
            os.close(self._fd)
            raise

    def _parse(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise ConfigError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise ConfigError(f"{self.path}: not a safetensors file (header length {n} does not fit the file)")
        try:
            header = json.loads(os.pread(self._fd, n, 8))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{self.path}: not a safetensors file (header is not JSON: {e})") from None
        if not isinstance(header, dict):
            raise ConfigError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        self.metadata: dict[str, str] = meta if isinstance(meta, dict) else {}
        self._base = 8 + n
        data = size - self._base
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype = DTYPES[e["dtype"]]
                shape = tuple(int(d) for d in e["shape"])
                start, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{self.path}: tensor {name!r} has a malformed header entry {e!r}") from None
            want = math.prod(shape) * dtype.itemsize
            if min(shape, default=0) < 0 or not 0 <= start <= end <= data or end - start != want:
                raise ConfigError(
                    f"{self.path}: tensor {name!r} ({e['dtype']}, shape {list(shape)}) does not fit its byte range "
                    f"[{start}, {end}) of {data} data bytes (a truncated or damaged file?)"
                )
            self._entries[name] = (dtype, shape, start, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][0]

    def nbytes(self, name: str) -> int:
        _, _, start, end = self._entries[name]
        return end - start

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read from the file now (a fresh CPU tensor the caller owns)."""
        dtype, shape, start, end = self._entries[name]
        buf = bytearray(end - start)
        view, done = memoryview(buf), 0
        while done < len(buf):
            got = os.preadv(self._fd, [view[done:]], self._base + start + done)
            if got <= 0:
                raise ConfigError(f"{self.path}: file ended inside tensor {name!r} (truncated?)")
            done += got
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SafetensorsWriter:
    """A safetensors file written tensor by tensor in the order of ``specs`` ({name: (dtype, shape)}), into a temp
    file beside ``path`` that :meth:`close` renames into place once every tensor is in (``abort`` removes it)."""

    def __init__(
        self,
        path: str,
        specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path, self._tmp = path, f"{path}.tmp.{os.getpid()}"
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        self._order: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        offset = 0
        for name, dtype, shape in specs:
            if name in header:
                raise ValueError(f"tensor {name!r} given twice")
            n = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self._order.append((name, dtype, tuple(shape)))
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, t: torch.Tensor) -> None:
        """Append tensor ``name``: the next one in the promised order, with its promised dtype and shape."""
        want, dtype, shape = self._order[self._next] if self._next < len(self._order) else (None, None, None)
        if name != want:
            raise ValueError(f"tensor {name!r} written out of order (expected {want!r})")
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"tensor {name!r} is {t.dtype} {tuple(t.shape)}, promised {dtype} {shape}")
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            self._f.write(memoryview(flat.view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            missing = [n for n, _, _ in self._order[self._next :]]
            self.abort()
            raise ValueError(f"{self.path}: {len(missing)} tensor(s) never written, first {missing[0]!r}")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        if os.path.lexists(self._tmp):
            os.remove(self._tmp)


class ShardedReader:
    """A checkpoint of one safetensors file or of several listed by a ``*.safetensors.index.json``: every tensor by
    name, whichever shard holds it."""

    def __init__(
        self, folder: str, single: str = "model.safetensors", index: str | None = "model.safetensors.index.json"
    ) -> None:
        self.folder = folder
        idx = os.path.join(folder, index) if index else ""
        if idx and os.path.exists(idx):
            weight_map = read_json(idx, "checkpoint index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ConfigError(f"{idx}: weight_map must map tensor names to shard file names")
            files = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(folder, single)):
            weight_map, files = None, [single]
        else:
            raise ConfigError(
                f"{folder}: no {single}{f' and no {index}' if index else ''} (not a safetensors checkpoint)"
            )
        bad = [f for f in files if os.path.basename(f) != f]
        if bad:
            raise ConfigError(f"{idx}: shard name {bad[0]!r} is not a file name inside the checkpoint folder")
        self.readers: dict[str, SafetensorsReader] = {}
        try:
            for f in files:
                self.readers[f] = SafetensorsReader(os.path.join(folder, f))
        except BaseException:
            self.close()
            raise
        self._where: dict[str, SafetensorsReader] = {}
        for f, r in self.readers.items():
            for k in r.keys():
                if weight_map is not None and weight_map.get(k) != f:
                    raise ConfigError(f"{r.path}: holds {k!r}, which the index places in {weight_map.get(k)!r}")
                if k in self._where:
                    raise ConfigError(f"{folder}: tensor {k!r} is in two shards")
                self._where[k] = r
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(self._where))
            if absent:
                raise ConfigError(f"{idx}: lists {absent[0]!r}, which no shard holds ({len(absent)} missing)")

    def keys(self) -> list[str]:
        return list(self._where)

    def reader(self, name: str) -> SafetensorsReader:
        return self._where[name]

    def get(self, name: str) -> torch.Tensor:
        return self._where[name].get(name)

    def largest_shard_bytes(self) -> int:
        return max(os.path.getsize(r.path) for r in self.readers.values())

    def close(self) -> None:
        for r in self.readers.values():
            r.close()

    def __enter__(self) -> ShardedReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
