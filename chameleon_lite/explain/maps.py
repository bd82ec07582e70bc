"""Cross-modal attention maps: what a text token looks at in a picture or a clip, from the attention the model runs.

A document (prompt + generated or given media) is run once through the transformer with its attention
probabilities recorded (:meth:`~chameleon_lite.model.transformer.Transformer.attention_probs`: the same q and k,
the same document / causal / bidirectional-span mask). For a word and a media span, the map is the attention
between the word's tokens and the span's tokens, in whichever direction the sequence allows: a word written after
the picture reads the picture (its row over the picture's keys, e.g. a caption); a word of a request before the
picture is read by it (the picture's rows at the word's key, e.g. text -> image). Per layer averaged over heads and
over the word's tokens, then over layers. A picture's map is laid on its token grid; a clip's per codec frame (its
residual levels summed).

:func:`coverage_share` measures a map against ground truth: the share of the map's mass on the cells a shape
covers, against the share a uniform map would put there (the cells' coverage fraction).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import torch

from chameleon_lite.vocab import AUDIO, IMAGE, UnifiedVocab

WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


@dataclasses.dataclass(frozen=True)
class MediaSpan:
    """The code tokens of one picture or clip: positions [start, end) of the sequence (markers excluded)."""

    kind: str  # "image" | "audio"
    start: int
    end: int
    index: int  # k-th span of its kind in the document


@dataclasses.dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]  # the tokens that spell it


def media_spans(ids: list[int], vocab: UnifiedVocab) -> list[MediaSpan]:
    """The runs of image and audio codes in ``ids`` (a span cut off by the token budget included)."""
    modality = vocab.modality(torch.tensor(ids, dtype=torch.int64)).tolist()
    out: list[MediaSpan] = []
    count = {"image": 0, "audio": 0}
    i = 0
    while i < len(ids):
        if modality[i] in (IMAGE, AUDIO):
            kind = "image" if modality[i] == IMAGE else "audio"
            j = i
            while j < len(ids) and modality[j] == modality[i]:
                j += 1
            out.append(MediaSpan(kind, i, j, count[kind]))
            count[kind] += 1
            i = j
        else:
            i += 1
    return out


def words_of(ids: list[int], vocab: UnifiedVocab, text_tokenizer: Any, only: list[str] | None = None) -> list[Word]:
    """The words of the text runs of ``ids`` with the tokens that spell them; ``only``: keep these words (any case)."""
    lo, hi = vocab.text_range()
    words: list[Word] = []
    i = 0
    while i < len(ids):
        if not lo <= ids[i] < hi:
            i += 1
            continue
        run, owner, buf = [], [], b""
        while i < len(ids) and lo <= ids[i] < hi:
            piece = text_tokenizer.token_bytes(ids[i] - lo)
            buf += piece
            owner += [i] * len(piece)
            run.append(i)
            i += 1
        text = buf.decode("utf-8", errors="replace")
        # byte offsets of each character, so that a match maps back to the tokens holding its bytes
        starts = np.cumsum([0] + [len(c.encode("utf-8", errors="replace")) for c in text])
        for m in WORD.finditer(text):
            b0, b1 = int(starts[m.start()]), int(starts[m.end()])
            pos = tuple(sorted(set(owner[b0:b1])))
            if pos and (only is None or m.group().lower() in only):
                words.append(Word(m.group(), pos))
    return words


def word_map(probs: list[torch.Tensor], word: Word, span: MediaSpan) -> tuple[np.ndarray, str]:
    """[layers, span length] attention between ``word`` and ``span`` (mean over heads and the word's tokens) and
    its direction: "reads" (the word attends to the span, written after it) or "read by" (the span attends to
    the word). probs: per layer [Hq, L, L] of one row."""
    w = torch.tensor(word.positions)
    if min(word.positions) >= span.end:
        maps = [p[:, w, span.start : span.end].mean(dim=(0, 1)) for p in probs]
        direction = "reads"
    elif max(word.positions) < span.start:
        maps = [p[:, span.start : span.end][:, :, w].mean(dim=(0, 2)) for p in probs]
        direction = "read by"
    else:
        raise ValueError(f"the word {word.text!r} lies inside the {span.kind} span")
    return torch.stack(maps).numpy(), direction


def on_grid(m: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A picture span's map [..., h*w] (raster order; a span cut short is padded with zeros) -> [..., h, w]."""
    h, w = grid
    flat = np.zeros((*m.shape[:-1], h * w), np.float32)
    flat[..., : min(m.shape[-1], h * w)] = m[..., : h * w]
    return flat.reshape(*m.shape[:-1], h, w)


def per_frame(m: np.ndarray, levels: int) -> np.ndarray:
    """A clip span's map [..., frames * levels] (frame-major) -> [..., frames], the levels of a frame summed."""
    n = m.shape[-1] // levels * levels
    return m[..., :n].reshape(*m.shape[:-1], -1, levels).sum(-1)


def grid_coverage(pixel_coverage: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[H, W] coverage in [0, 1] -> [h, w]: the fraction of each token cell's pixels the shape covers."""
    H, W = pixel_coverage.shape
    h, w = grid
    return pixel_coverage.reshape(h, H // h, w, W // w).mean(axis=(1, 3))


def coverage_share(m: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """(the share of map ``m``'s mass weighted by coverage ``cov``, the same share for a uniform map): a map that
    looks at the shape gives the first above the second."""
    total = float(m.sum())
    share = float((m * cov).sum()) / total if total > 0 else 0.0
    return share, float(cov.mean())
