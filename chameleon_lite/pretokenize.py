"""Manifest -> pretokenized shards (``chameleon-lite data tokenize``).

Documents are read from a JSONL manifest, split into train/validation by a seeded draw, encoded in chunks
(text BPE, image VQ in one batch per chunk, audio codec per clip) and appended in manifest order to
``OUT/train`` (and ``OUT/val``). With ``workers > 1`` chunks are encoded in worker processes that each load the
tokenizers once; the output does not depend on the number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from chameleon_lite.data.manifest import Document, iter_documents
from chameleon_lite.data.sequence import EncodedSequence, SequenceEncoder, parts_from_segments
from chameleon_lite.data.shards import ShardWriter
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.tokenizers.loader import Tokenizers

_WORKER: dict[str, Any] = {}


def _load_tokenizers(tokenizers: str | Any):
    return Tokenizers.load(tokenizers) if isinstance(tokenizers, (str, os.PathLike)) else tokenizers


def _init_worker(tokenizer_dir: str, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["encoder"] = SequenceEncoder(_load_tokenizers(tokenizer_dir))


def _encode_chunk(encoder: SequenceEncoder, docs: list[Document]) -> list[EncodedSequence | str]:
    """Encoded documents, or for an unreadable one the error prefixed with its manifest line."""
    res = encoder.encode_many([parts_from_segments(d.segments) for d in docs], on_error="skip")
    return [r if isinstance(r, EncodedSequence) else f"{d.where}: {r}" for d, r in zip(docs, res)]


def _worker_chunk(docs: list[Document]) -> list[EncodedSequence | str]:
    return _encode_chunk(_WORKER["encoder"], docs)


def _chunks(docs: list[Document], size: int) -> Iterator[list[Document]]:
    for i in range(0, len(docs), size):
        yield docs[i : i + size]


def split_validation(n: int, fraction: float, seed: int) -> np.ndarray:
    """bool [n]: which documents go to validation (round(n * fraction), at least one when fraction > 0 and n > 1)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {fraction}")
    k = int(round(n * fraction))
    if fraction > 0 and n > 1:
        k = min(max(k, 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 0x5EED]).permutation(n)[:k]] = True
    return mask


def pretokenize(
    manifest: str,
    tokenizers: str | Any,
    out: str,
    *,
    workers: int = 1,
    val_fraction: float = 0.0,
    seed: int = 0,
    chunk_docs: int = 128,
    shard_tokens: int = 1 << 26,
    on_error: str = "raise",
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize every document of ``manifest`` into ``out/train`` (and ``out/val`` when ``val_fraction > 0``).

    tokenizers: a tokenizer folder (tokenizer.json, image_vq.*, audio_codec.*) or a loaded ``Tokenizers``.
    on_error: "raise" stops at the first unreadable media file (DataError naming file and manifest line; a path
    that is missing or not a regular file is found before anything is encoded); "skip" leaves such documents out
    (those with missing files too) and reports them. Media files are judged by the tokenizers' readers, the same
    checks ``data validate`` runs. Returns a summary (counts, skipped, seconds).
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if chunk_docs < 1:
        raise ConfigError(f"chunk_docs must be >= 1, got {chunk_docs}")
    t0 = time.perf_counter()
    tk = _load_tokenizers(tokenizers)
    docs = _read_documents(manifest, tk, check_files=on_error == "raise")
    is_val = split_validation(len(docs), val_fraction, seed)
    tok_dir = os.path.abspath(tokenizers) if isinstance(tokenizers, (str, os.PathLike)) else ""
    extra = {"tokenizers": tok_dir, "manifest": os.path.abspath(manifest), "seed": seed, "val_fraction": val_fraction}
    if getattr(tk, "codes_hash", ""):
        extra["codes_hash"] = tk.codes_hash  # which codes these are: checked by training against its tokenizers
    splits = ("train", "val") if is_val.any() else ("train",)
    writers = {
        name: ShardWriter(
            os.path.join(out, name), tk.vocab, shard_tokens=shard_tokens, extra_meta={**extra, "split": name}
        )
        for name in splits
    }
    os.makedirs(out, exist_ok=True)
    for w in writers.values():
        w.__enter__()
    try:
        with contextlib.closing(_encoded(docs, tk, tok_dir, workers, chunk_docs)) as results:  # stops the pool
            skipped = _write_all(results, writers, is_val, on_error, len(docs), progress)
    except BaseException as e:
        for w in writers.values():
            w.__exit__(type(e), e, None)
        raise
    if writers["train"].n_docs == 0:
        for w in writers.values():
            w.__exit__(DataError, None, None)
        raise DataError(
            f"{manifest}: no document could be tokenized ({len(skipped)} skipped; first: {skipped[0] if skipped else '-'})"
        )
    for w in writers.values():
        w.__exit__(None, None, None)
    summary = {
        name: {k: w.meta()[k] for k in ("documents", "tokens", "tokens_per_modality")} for name, w in writers.items()
    }
    summary.update(skipped=len(skipped), skipped_examples=skipped[:10], seconds=round(time.perf_counter() - t0, 2))
    return summary


def _read_documents(manifest: str, tk: Any, check_files: bool) -> list:
    """Every document of the manifest, after checking that the tokenizers can encode each kind of segment."""
    docs = list(iter_documents(manifest, check_files=check_files))
    if not docs:
        raise DataError(f"{manifest}: no documents")
    for d in docs:
        for kind in ("image", "audio"):
            if getattr(tk, kind) is None and any(s.kind == kind for s in d.segments):
                raise ConfigError(
                    f"{d.where}: the document has {kind} segments but the tokenizers have no {kind} tokenizer"
                )
    return docs


def _encoded(docs: list, tk: Any, tok_dir: str, workers: int, chunk_docs: int) -> Iterator[tuple[list[int], list]]:
    """(document indices, their encodings or error lines) per chunk, in order: in worker processes when there are
    several workers, a tokenizer folder to load in each and more than one chunk; else in this process."""
    chunks = list(_chunks(list(range(len(docs))), chunk_docs))
    if not (workers > 1 and tok_dir and len(docs) > chunk_docs):
        encoder = SequenceEncoder(tk)
        for c in chunks:
            yield c, _encode_chunk(encoder, [docs[i] for i in c])
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = cf.ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(tok_dir, threads)
    )
    try:
        yield from zip(chunks, pool.map(_worker_chunk, [[docs[i] for i in c] for c in chunks]))
    finally:
        pool.shutdown(cancel_futures=True)


def _write_all(results, writers: dict, is_val, on_error: str, total: int, progress: bool) -> list[str]:
    """Write each encoded document into its split's shards; the error lines of the documents left out."""
    skipped: list[str] = []
    with tqdm(total=total, desc="tokenizing", unit="doc", disable=not progress, file=sys.stderr) as bar:
        for idx, res in results:
            for i, r in zip(idx, res):
                if isinstance(r, str):
                    if on_error == "raise":
                        raise DataError(r)
                    skipped.append(r)
                    continue
                writers["val" if is_val[i] else "train"].add(r.ids, r.spans)
            bar.update(len(idx))
            bar.set_postfix(skipped=len(skipped))
    return skipped
