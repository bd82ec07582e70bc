"""Training data of the tokenizers, read from disk as batches ask for it.

A manifest's pictures or clips are listed once (paths only); each batch decodes the items it draws, and a bounded
least-recently-used cache keeps the most recent ``cache_items`` decoded, so memory stays the same for 8000 pictures
or 8 million. Which items a batch holds is drawn by the caller from its own generator (the tokenizer loop
checkpoints it), so the batches are a function of seed and step whether an item comes from disk or the cache.

``split`` keeps the documents of one part of :mod:`chameleon_lite.data.splits` (AV-MNIST: written digits by their
MNIST index, spoken digits by speaker and take); "" keeps everything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from chameleon_lite.data.audio_files import load_audio
from chameleon_lite.data.image_files import load_images
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.data.splits import SPLITS, split_of_mnist, split_of_recording
from chameleon_lite.errors import ConfigError, DataError

T = TypeVar("T")


def check_split(split: str) -> None:
    if split and split not in SPLITS:
        raise ConfigError(f"split must be '' (everything) or one of {SPLITS}, got {split!r}")


def split_of(meta: dict[str, Any], kind: str, where: str) -> str:
    """The AV-MNIST part of a document from its meta: a picture by its MNIST ``index``, a clip by its ``speaker``
    and take ``index``."""
    if kind == "audio":
        return split_of_recording(meta)
    index = meta.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        raise DataError(f"{where}: a split needs meta 'index' (the MNIST picture's position), got {index!r}")
    return split_of_mnist(index)


def manifest_media(manifest: str, kind: str, split: str = "") -> list[tuple[str, dict[str, Any] | None]]:
    """(absolute path, its ground-truth media record or None) of every ``kind`` ("image"/"audio") segment of a JSONL
    manifest, in order; with ``split``, only the documents of that part."""
    check_split(split)
    out = []
    for doc in iter_documents(manifest):
        meta = doc.meta or {}
        if (
            split
            and any(s.kind == kind for s in doc.segments)
            and split_of(meta, kind, f"{manifest}: {doc.id}") != split
        ):
            continue
        media = meta.get("media") or []
        mi = 0
        for seg in doc.segments:
            if seg.kind in ("image", "audio"):
                rec = media[mi] if mi < len(media) else None
                mi += 1
                if seg.kind == kind:
                    out.append((seg.path, rec if isinstance(rec, dict) and rec.get("type") == kind else None))
    return out


class LazyItems(Generic[T]):
    """items[i] decodes ``paths[i]`` with ``read`` on first use; the last ``cache_items`` decoded stay in memory."""

    def __init__(self, paths: list[str], read: Callable[[str], T], cache_items: int = 4096) -> None:
        if cache_items < 0:
            raise ConfigError(f"cache_items must be >= 0, got {cache_items}")
        self.paths, self.read, self.cache_items = list(paths), read, cache_items
        self.cache: OrderedDict[int, T] = OrderedDict()
        self.reads = 0  # decodes so far (a cache miss each)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> T:
        i = int(i)
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        item = self.read(self.paths[i])
        self.reads += 1
        if self.cache_items:
            self.cache[i] = item
            if len(self.cache) > self.cache_items:
                self.cache.popitem(last=False)
        return item


class ImageSource:
    """Pictures for training: ``take(idx)`` -> uint8 [len(idx), size, size, 3], from files (lazily) or an array."""

    def __init__(self, paths: list[str] | None, size: int, cache_items: int = 4096, images: np.ndarray | None = None):
        self.size = size
        self.array = images
        self.items = (
            None if images is not None else LazyItems(paths or [], lambda p: load_images(p, size)[0], cache_items)
        )

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.items)

    def take(self, idx: np.ndarray) -> np.ndarray:
        if self.array is not None:
            return self.array[idx]
        return np.stack([self.items[i] for i in idx]) if len(idx) else np.empty((0, self.size, self.size, 3), np.uint8)


def clip_source(paths: list[str], sample_rate: int, cache_items: int = 4096) -> LazyItems[np.ndarray]:
    """Clips for training: items[i] is mono float32 at ``sample_rate`` (converted by load_audio), read lazily."""
    return LazyItems(paths, lambda p: load_audio(p, sample_rate)[0], cache_items)
