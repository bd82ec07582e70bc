"""A small in-test batch source with the PackedLoader contract (shapes, dtypes, global row order independent of
the world size, resumable position), over a toy vocabulary with all three modalities."""

from __future__ import annotations

import json
import os

import torch

from chameleon_lite.vocab import UnifiedVocab

VOCAB = UnifiedVocab(text_size=300, image_codebook=64, audio_levels=2, audio_codebook=32)


def write_meta(shards_dir: str, vocab: UnifiedVocab = VOCAB) -> str:
    os.makedirs(shards_dir, exist_ok=True)
    with open(os.path.join(shards_dir, "meta.json"), "w") as f:
        json.dump({"vocab": {**vocab.to_dict(), "hash": vocab.hash}, "vocab_hash": vocab.hash}, f)
    return shards_dir


def make_row(index: int, seq_len: int, seed: int, vocab: UnifiedVocab = VOCAB) -> dict[str, torch.Tensor]:
    """Row ``index`` of the global sequence: packed documents of learnable patterns (text counts up, an image
    span repeats a code, an audio span alternates levels), some image spans bidirectional (no loss)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    toks, docs, spans, pos = [], [], [], []
    doc = 0
    while len(toks) < seq_len + 1:
        n = int(torch.randint(6, 24, (1,), generator=g))
        start = int(torch.randint(0, vocab.text_size - 30, (1,), generator=g))
        body = [vocab.bos] + [vocab.text_offset + start + i for i in range(n)]
        sp = [0] * len(body)
        code = vocab.image_offset + int(torch.randint(0, vocab.image_codebook, (1,), generator=g))
        bidir = bool(torch.rand((), generator=g) < 0.5)
        body += [vocab.boi] + [code] * 6 + [vocab.eoi]
        sp += [0] + [doc + 1 if bidir else 0] * 6 + [0]
        a = int(torch.randint(0, vocab.audio_codebook, (1,), generator=g))
        body += (
            [vocab.boa]
            + [vocab.audio_offset + a, vocab.audio_offset + vocab.audio_codebook + a] * 3
            + [vocab.eoa, vocab.eos]
        )
        sp += [0] * 9
        toks += body
        spans += sp
        docs += [doc] * len(body)
        pos += list(range(len(body)))
        doc += 1
    t = torch.tensor(toks[: seq_len + 1])
    d = torch.tensor(docs[: seq_len + 1], dtype=torch.int32)
    s = torch.tensor(spans[: seq_len + 1], dtype=torch.int32)
    same_doc = d[1:] == d[:-1]
    in_span = s[1:] != 0
    return {
        "input_ids": t[:-1],
        "targets": t[1:],
        "loss_mask": same_doc & ~in_span,
        "doc_ids": d[:-1],
        "span_ids": s[:-1],
        "positions": torch.tensor(pos[:seq_len]),
    }


class SyntheticLoader:
    def __init__(self, shards_dir, seq_len, batch_size, *, rank=0, world_size=1, seed=0):
        assert batch_size % world_size == 0
        self.seq_len, self.batch_size, self.rank, self.world, self.seed = seq_len, batch_size, rank, world_size, seed
        with open(os.path.join(shards_dir, "meta.json")) as f:
            self.vocab = UnifiedVocab.from_dict(json.load(f)["vocab"])
        self.batch = 0

    def __iter__(self):
        return self

    def __next__(self):
        per = self.batch_size // self.world
        first = self.batch * self.batch_size + self.rank * per
        rows = [make_row(first + i, self.seq_len, self.seed, self.vocab) for i in range(per)]
        self.batch += 1
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def state_dict(self):
        return {"batch": self.batch}

    def load_state_dict(self, state):
        self.batch = int(state["batch"])
