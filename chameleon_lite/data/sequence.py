"""Documents -> unified token sequences (ARCHITECTURE §4), shared by the pretokenizer and generation prompts.

    <bos> text… <boi> img_0 … img_{N-1} <eoi> text… <boa> f0l0 … f0l{nq-1} f1l0 … <eoa> … <eos>

A document is a list of :class:`Part` s. An image part becomes ``<boi>`` + N codes + ``<eoi>``; an audio part
``<boa>`` + whole frames in level order + ``<eoa>``. A *bidirectional* part (an input the model is conditioned
on, never one it must produce) records the range of its codes (the markers excluded) in
:attr:`EncodedSequence.spans`; the packing loader turns these into span ids for attention and excludes them
from the loss.

Conversations (the issue's format, ARCHITECTURE §4): a *turn* part (``Part("turn", "user" | "assistant" |
"end")``, from a manifest segment ``{"turn": ...}``) becomes the single special id ``<user>``, ``<assistant>`` or
``<eot>`` of the vocabulary's named reserved slots; a vocabulary without them (num_special < 10) refuses such a
document. Text parts never produce these ids, so a user cannot forge a turn::

    <bos> <user> request… [media] <eot> <assistant> answer… [media] <eot> <user> … <eos>

Images of a batch of documents are decoded one by one (so a bad file is named and, if asked, skipped) and
encoded by the VQ tokenizer in one batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from chameleon_lite.data.image_files import load_images
from chameleon_lite.errors import ConfigError, DataError

KINDS = ("text", "image", "audio", "turn")
TURN_TOKENS = {"user": "<user>", "assistant": "<assistant>", "end": "<eot>"}


@dataclasses.dataclass(frozen=True)
class Part:
    """One segment: ``value`` is a str for text; a path, PIL image or uint8 array for an image; a path or a
    float waveform at the codec's sample rate for audio; a key of :data:`TURN_TOKENS` for a turn marker."""

    kind: str
    value: Any
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"segment kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "turn" and self.value not in TURN_TOKENS:
            raise ConfigError(f"a turn part must be one of {list(TURN_TOKENS)}, got {self.value!r}")


@dataclasses.dataclass
class EncodedSequence:
    """ids: int64 [n] unified ids; spans: bidirectional code ranges ``[start, end)`` into ids."""

    ids: np.ndarray
    spans: list[tuple[int, int]]

    def span_ids(self) -> np.ndarray:
        """int32 [n]: 0 outside bidirectional spans, k (1-based, in order) inside the k-th span."""
        out = np.zeros(len(self.ids), dtype=np.int32)
        for k, (a, b) in enumerate(self.spans, 1):
            out[a:b] = k
        return out


def parts_from_segments(segments: Sequence[Any]) -> list[Part]:
    """Manifest segments (chameleon_lite.data.manifest.Segment) -> parts."""
    values = {"text": lambda s: s.text, "turn": lambda s: s.turn}
    return [Part(s.kind, values.get(s.kind, lambda s: s.path)(s), s.bidirectional) for s in segments]


def _describe(value: Any) -> str:
    return str(value) if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__") else type(value).__name__


def _check_file(value: Any, kind: str) -> None:
    if isinstance(value, (str, os.PathLike)) and not os.path.isfile(value):
        raise DataError(f"{os.fspath(value)}: {kind} file not found")


class SequenceEncoder:
    """Turns documents into unified ids with the tokenizers of one :class:`~chameleon_lite.tokenizers.loader.Tokenizers`."""

    def __init__(self, tokenizers: Any) -> None:
        self.tk = tokenizers
        self.vocab = tokenizers.vocab

    def _require(self, kind: str) -> Any:
        tok = getattr(self.tk, kind)
        if tok is None:
            raise ConfigError(f"the document has {kind} segments but the tokenizer folder has no {kind} tokenizer")
        return tok

    def _image_codes(self, values: list[Any]) -> tuple[list[np.ndarray | None], list[DataError | None]]:
        """Decode each picture (errors per item), then encode the good ones in one batch -> unified ids [N]."""
        tok = self._require("image")
        rgbs, errors = [], []
        for v in values:
            try:
                _check_file(v, "image")
                rgbs.append(load_images([v], tok.image_size, tok.cfg.max_pixels)[0])
                errors.append(None)
            except DataError as e:
                rgbs.append(None)
                errors.append(e)
        good = [r for r in rgbs if r is not None]
        codes = iter(tok.encode_rgb(np.stack(good)).reshape(len(good), -1) if good else [])
        out = [None if r is None else self.vocab.image_to_unified(next(codes)).numpy() for r in rgbs]
        return out, errors

    def _audio_ids(self, value: Any) -> np.ndarray:
        tok = self._require("audio")
        _check_file(value, "audio")
        codes = tok.encode(value)
        ids = self.vocab.audio_to_unified(codes).numpy()
        if ids.size == 0:
            raise DataError(f"{_describe(value)}: audio clip is too short to hold one codec frame")
        return ids

    def _turn_id(self, turn: str) -> np.ndarray:
        if not self.vocab.conversation_ready:
            raise ConfigError(
                f"the document has conversation turns but the vocabulary has {self.vocab.num_special} special slots; "
                "conversations need num_special >= 10 (<user> <assistant> <eot>)"
            )
        return np.array([self.vocab.special_id(TURN_TOKENS[turn])], dtype=np.int64)

    def encode_many(
        self, docs: Sequence[Sequence[Part]], *, bos: bool = True, eos: bool = True, on_error: str = "raise"
    ) -> list[EncodedSequence | DataError]:
        """Encode documents; with ``on_error="skip"`` a document whose media cannot be read comes back as the
        DataError instead of raising it."""
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        v = self.vocab
        image_values = [(d, i, p.value) for d, doc in enumerate(docs) for i, p in enumerate(doc) if p.kind == "image"]
        image_ids: dict[tuple[int, int], np.ndarray] = {}
        failed: dict[int, DataError] = {}
        if image_values:
            ids, errs = self._image_codes([x for _, _, x in image_values])
            for (d, i, _), a, e in zip(image_values, ids, errs):
                if e is not None:
                    failed.setdefault(d, e)
                else:
                    image_ids[(d, i)] = a
        texts = [(d, i, p.value) for d, doc in enumerate(docs) for i, p in enumerate(doc) if p.kind == "text"]
        for _, _, t in texts:
            if not isinstance(t, str):
                raise DataError(f"a text segment must be a string, got {type(t).__name__}")
        text_ids = dict(
            zip([(d, i) for d, i, _ in texts], self.tk.text.encode_batch([t for _, _, t in texts]) if texts else [])
        )
        out: list[EncodedSequence | DataError] = []
        for d, doc in enumerate(docs):
            pieces: list[np.ndarray] = [np.array([v.bos], dtype=np.int64)] if bos else []
            spans: list[tuple[int, int]] = []
            n = len(pieces[0]) if pieces else 0
            try:
                if d in failed:
                    raise failed[d]
                for i, p in enumerate(doc):
                    if p.kind == "text":
                        body = np.asarray(text_ids[(d, i)], dtype=np.int64) + v.text_offset
                        open_, close = None, None
                    elif p.kind == "turn":
                        body, open_, close = self._turn_id(p.value), None, None
                    elif p.kind == "image":
                        body, open_, close = image_ids[(d, i)], v.boi, v.eoi
                    else:
                        body, open_, close = self._audio_ids(p.value), v.boa, v.eoa
                    if open_ is not None:
                        pieces.append(np.array([open_], dtype=np.int64))
                        n += 1
                        if p.bidirectional:
                            spans.append((n, n + len(body)))
                    pieces.append(body)
                    n += len(body)
                    if close is not None:
                        pieces.append(np.array([close], dtype=np.int64))
                        n += 1
            except DataError as e:
                if on_error == "raise":
                    raise
                out.append(e)
                continue
            if eos:
                pieces.append(np.array([v.eos], dtype=np.int64))
            ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
            out.append(EncodedSequence(ids=ids, spans=spans))
        return out

    def encode(self, parts: Sequence[Part], *, bos: bool = True, eos: bool = True) -> EncodedSequence:
        """One document (errors raise)."""
        res = self.encode_many([parts], bos=bos, eos=eos)[0]
        assert isinstance(res, EncodedSequence)
        return res
