"""The packing loader: fixed-length rows cut from a seeded stream of whole documents.

The stream is every document of a shard folder, epoch after epoch, each epoch in its own seeded order
(``shuffle=True``). Global row r is the stream's tokens ``[r * L, r * L + L + 1)``; a document longer than what
is left of a row continues in the next one (its positions continue too). Batch b holds global rows
``[b * batch_size, (b + 1) * batch_size)`` and rank k of ``world_size`` takes its contiguous share, so the rows
seen by the whole job do not depend on the world size, and resuming needs only the batch counter.

A batch (all ``[rows, L]``)::

    input_ids  int64   stream tokens
    targets    int64   the next token of each position
    loss_mask  bool    target in the same document and not inside a bidirectional input span
    doc_ids    int32   0, 1, 2, … per document piece in the row (attention never crosses them)
    span_ids   int32   0, or k > 0 for the k-th bidirectional span of the row
    positions  int64   offset of the token inside its document (RoPE)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from chameleon_lite.data.shards import ShardSet
from chameleon_lite.errors import ConfigError, DataError


class PackedLoader:
    def __init__(
        self,
        shards_dir: str,
        seq_len: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        if batch_size % world_size:
            raise ConfigError(
                f"the global batch ({batch_size} rows) must be divisible by the world size ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside world size {world_size}")
        self.shards = ShardSet(shards_dir)
        if len(self.shards) == 0 or self.shards.n_tokens == 0:
            raise DataError(f"{shards_dir}: the shard folder holds no tokens")
        self.vocab = self.shards.vocab
        self.seq_len, self.batch_size, self.rank, self.world_size = seq_len, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.batch = 0
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._total = self.shards.n_tokens

    # ---- the stream ------------------------------------------------------------------------------
    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (document order, cumulative end offsets in that order) of epoch e (two epochs cached)."""
        if e not in self._epochs:
            n = len(self.shards)
            order = np.random.default_rng([self.seed, e]).permutation(n) if self.shuffle else np.arange(n)
            ends = np.cumsum(self.shards.doc_lengths[order])
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[e] = (order, ends)
        return self._epochs[e]

    def row(self, r: int) -> dict[str, torch.Tensor]:
        """Global row r (see the module docstring)."""
        L = self.seq_len
        need = L + 1
        toks = np.empty(need, dtype=np.int64)
        docs = np.empty(need, dtype=np.int32)
        spans = np.zeros(need, dtype=np.int32)
        pos = np.empty(need, dtype=np.int64)
        p = r * L
        filled = piece = n_spans = 0
        while filled < need:
            e, within = divmod(p, self._total)
            order, ends = self._epoch(e)
            j = int(np.searchsorted(ends, within, "right"))
            start = int(ends[j] - self.shards.doc_lengths[order[j]])
            off = within - start
            ids, sp = self.shards.document(int(order[j]))
            take = min(len(ids) - off, need - filled)
            sl = slice(filled, filled + take)
            toks[sl] = ids[off : off + take]
            docs[sl] = piece
            pos[sl] = np.arange(off, off + take)
            for a, b in sp:
                a, b = max(int(a), off), min(int(b), off + take)
                if a < b:
                    n_spans += 1
                    spans[filled + a - off : filled + b - off] = n_spans
            filled += take
            p += take
            piece += 1
        same_doc = docs[1:] == docs[:-1]
        return {
            "input_ids": torch.from_numpy(toks[:-1].copy()),
            "targets": torch.from_numpy(toks[1:].copy()),
            "loss_mask": torch.from_numpy(same_doc & (spans[1:] == 0)),
            "doc_ids": torch.from_numpy(docs[:-1].copy()),
            "span_ids": torch.from_numpy(spans[:-1].copy()),
            "positions": torch.from_numpy(pos[:-1].copy()),
        }

    # ---- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> PackedLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        per = self.batch_size // self.world_size
        first = self.batch * self.batch_size + self.rank * per
        rows = [self.row(first + i) for i in range(per)]
        self.batch += 1
        return {k: torch.stack([row[k] for row in rows]) for k in rows[0]}

    @property
    def tokens_per_epoch(self) -> int:
        return self._total

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "batch_size": self.batch_size, "seq_len": self.seq_len, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("batch_size", "seq_len", "seed"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ConfigError(
                    f"the loader state was saved with {key}={state[key]}, this run uses {getattr(self, key)}; "
                    "resuming would not continue the same stream"
                )
        self.batch = int(state["batch"])
