"""Pretokenized shards (ARCHITECTURE §7): writing and memory-mapped reading.

A shard folder holds::

    meta.json                 format version, vocabulary (+ hash), tokenizer folder, counts per modality, shard list
    tokens_00000.bin          flat little-endian uint32 unified ids of whole documents, back to back
    docs_00000.npy            int64 [n_docs + 1] document offsets into the token file
    spans_00000.npy           int64 [n_spans, 2] bidirectional code ranges [start, end) (token-file offsets)

Token files are read with ``np.memmap``; nothing is loaded whole. A folder is written under a temporary name
and renamed when complete, so a crash never leaves a half-written shard set that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.files import SHARDS, check_output_dir, replace_dir, write_json_atomic
from chameleon_lite.vocab import UnifiedVocab

FORMAT_VERSION = 1
META_FILE = "meta.json"
MODALITIES = ("text", "image", "audio")


def _names(k: int) -> tuple[str, str, str]:
    return f"tokens_{k:05d}.bin", f"docs_{k:05d}.npy", f"spans_{k:05d}.npy"


class ShardWriter:
    """Appends encoded documents and cuts a new shard every ``shard_tokens`` tokens (at a document boundary).

    Use as a context manager; the folder appears under its final name only after a clean exit.
    """

    def __init__(
        self, out: str, vocab: UnifiedVocab, *, shard_tokens: int = 1 << 26, extra_meta: dict[str, Any] | None = None
    ) -> None:
        if shard_tokens < 1:
            raise ConfigError(f"shard_tokens must be positive, got {shard_tokens}")
        check_output_dir(out, SHARDS)  # before any work: never replace a folder this tool did not write
        self.out, self.vocab, self.shard_tokens = out, vocab, shard_tokens
        self.extra = dict(extra_meta or {})
        self.tmp = f"{out.rstrip(os.sep)}.tmp.{os.getpid()}"
        self.shards: list[dict[str, Any]] = []
        self.counts = np.zeros(3, dtype=np.int64)
        self.n_docs = 0
        self._reset()

    def _reset(self) -> None:
        self._tokens: list[np.ndarray] = []
        self._offsets = [0]
        self._spans: list[tuple[int, int]] = []

    def __enter__(self) -> ShardWriter:
        if os.path.exists(self.tmp):
            shutil.rmtree(self.tmp)
        os.makedirs(self.tmp)
        return self

    def add(self, ids: np.ndarray, spans: list[tuple[int, int]]) -> None:
        """ids: int [n] unified ids of one whole document; spans: bidirectional ranges into ids."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab.size:
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise DataError(f"token id {bad} is outside the vocabulary [0, {self.vocab.size})")
        base = self._offsets[-1]
        self._tokens.append(ids.astype("<u4"))
        self._offsets.append(base + ids.size)
        self._spans.extend((base + a, base + b) for a, b in spans)
        self.n_docs += 1
        edges = [0, self.vocab.image_offset, self.vocab.audio_offset, self.vocab.size]
        # specials count as text (ARCHITECTURE §3)
        self.counts += np.histogram(ids, bins=edges)[0]
        if self._offsets[-1] >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if len(self._offsets) == 1:
            return
        tok, docs, spans = _names(len(self.shards))
        np.concatenate(self._tokens).tofile(os.path.join(self.tmp, tok))
        np.save(os.path.join(self.tmp, docs), np.asarray(self._offsets, dtype=np.int64))
        np.save(os.path.join(self.tmp, spans), np.asarray(self._spans, dtype=np.int64).reshape(-1, 2))
        self.shards.append(
            {
                "tokens": tok,
                "docs": docs,
                "spans": spans,
                "n_tokens": int(self._offsets[-1]),
                "n_docs": len(self._offsets) - 1,
                "n_spans": len(self._spans),
            }
        )
        self._reset()

    def meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "vocab": {**self.vocab.to_dict(), "hash": self.vocab.hash},
            "vocab_hash": self.vocab.hash,
            "documents": self.n_docs,
            "tokens": int(self.counts.sum()),
            "tokens_per_modality": {m: int(c) for m, c in zip(MODALITIES, self.counts)},
            "shards": self.shards,
            **self.extra,
        }

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self._flush()
        write_json_atomic(os.path.join(self.tmp, META_FILE), self.meta())
        replace_dir(self.tmp, self.out, SHARDS)


def read_meta(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, META_FILE)
    if not os.path.isdir(folder):
        raise DataError(
            f"{folder}: not a folder; give the shard folder made by `chameleon-lite data tokenize` (e.g. SHARDS/train)"
        )
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise DataError(
            f"{path}: shard metadata not found; is {folder} a folder made by `chameleon-lite data tokenize`?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: shard metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab"), dict):
        raise DataError(f'{path}: shard metadata has no "vocab" object')
    return meta


def read_vocab(folder: str) -> tuple[UnifiedVocab, dict[str, Any]]:
    """The vocabulary recorded in ``folder/meta.json`` (checked against its hash) and the whole metadata."""
    meta = read_meta(folder)
    where = os.path.join(folder, META_FILE)
    vocab = UnifiedVocab.from_dict(meta["vocab"], source=f"{where} (vocab)")
    if meta.get("vocab_hash", vocab.hash) != vocab.hash:
        raise DataError(
            f"{where}: vocab_hash {meta['vocab_hash']} does not match the vocab recorded beside it ({vocab.hash})"
        )
    return vocab, meta


def _load_index(path: str) -> np.ndarray:
    """An index array of a shard (never unpickled), with errors that name the file."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: shard index cannot be read ({str(e)[:200]})") from None


class ShardSet:
    """Read-only view of a shard folder: documents by global index, token files memory-mapped.

    Attributes: ``vocab``, ``meta``, ``doc_lengths`` (int64 [n_docs]).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.vocab, self.meta = read_vocab(folder)
        where = os.path.join(folder, META_FILE)
        shards = self.meta.get("shards")
        if not isinstance(shards, list):
            raise DataError(f'{where}: shard metadata has no "shards" list')
        self._tokens, starts, lens, shard_of, self._spans = [], [], [], [], []
        for k, s in enumerate(shards):
            try:
                tok_path = os.path.join(folder, s["tokens"])
                n_tokens = int(s["n_tokens"])
                offsets = _load_index(os.path.join(folder, s["docs"]))
                spans = _load_index(os.path.join(folder, s["spans"]))
            except (KeyError, TypeError) as e:
                raise DataError(f"{where}: shard entry {k} is malformed ({e})") from None
            size = os.path.getsize(tok_path) if os.path.exists(tok_path) else -1
            if size != 4 * n_tokens:
                raise DataError(
                    f"{tok_path}: expected {4 * n_tokens} bytes ({n_tokens} tokens), found "
                    f"{'no file' if size < 0 else f'{size} bytes'}; the shard folder is incomplete or corrupt"
                )
            if (
                offsets.ndim != 1
                or offsets.size < 1
                or offsets[0] != 0
                or offsets[-1] != n_tokens
                or np.any(np.diff(offsets) < 0)
            ):
                raise DataError(
                    f"{os.path.join(folder, s['docs'])}: document offsets do not describe {n_tokens} tokens"
                )
            spans_path = os.path.join(folder, s["spans"])
            if spans.size and (
                spans.ndim != 2
                or spans.shape[1] != 2
                or spans.dtype.kind not in "iu"
                or spans.min() < 0
                or spans.max() > n_tokens
                or np.any(spans[:, 1] < spans[:, 0])
                or np.any(np.diff(spans[:, 0]) < 0)
            ):
                raise DataError(f"{spans_path}: span ranges are not sorted [start, end) pairs within {n_tokens} tokens")
            self._tokens.append(
                np.memmap(tok_path, dtype="<u4", mode="r", shape=(n_tokens,)) if n_tokens else np.zeros(0, "<u4")
            )
            starts.append(offsets[:-1])
            lens.append(np.diff(offsets))
            shard_of.append(np.full(offsets.size - 1, k, dtype=np.int32))
            self._spans.append(spans.astype(np.int64) if spans.size else np.zeros((0, 2), dtype=np.int64))
        self.doc_start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.doc_lengths = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        self.doc_shard = np.concatenate(shard_of) if shard_of else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return int(self.doc_lengths.size)

    @property
    def n_tokens(self) -> int:
        return int(self.doc_lengths.sum())

    def document(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids uint32 [n] (a view into the memmap), spans int64 [k, 2] relative to the document start)."""
        k, a = int(self.doc_shard[i]), int(self.doc_start[i])
        b = a + int(self.doc_lengths[i])
        sp = self._spans[k]
        lo, hi = np.searchsorted(sp[:, 0], a, "left"), np.searchsorted(sp[:, 0], b, "left")
        ids = self._tokens[k][a:b]
        if ids.size and int(ids.max()) >= self.vocab.size:  # written in range: a larger id means the file changed since
            raise DataError(
                f"{os.path.join(self.folder, self.meta['shards'][k]['tokens'])}: token id {int(ids.max())} "
                f"outside the vocabulary [0, {self.vocab.size}); the shard is corrupt"
            )
        return ids, sp[lo:hi] - a
