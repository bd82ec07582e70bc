"""Byte-level BPE text tokenizer on Hugging Face ``tokenizers``.

The BPE knows no special tokens: ``<boi>``, ``<eos>`` … live outside its id range in the unified vocabulary
(ids [0, S)), so text a user types — even the literal string "<boi>" — can only ever produce text ids.
Encoding is lossless: decode(encode(s)) == s for any Unicode string (no normaliser, byte-level alphabet).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from chameleon_lite.bundle import TEXT_FILE
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import atomic_path

DEFAULT_VOCAB_SIZE = 4096


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` (byte-level BPE). Ids are *local* BPE ids in [0, vocab_size)."""

    def __init__(self, tokenizer) -> None:
        self._tk = tokenizer
        if self._tk.get_added_tokens_decoder():
            # Added tokens would be matched inside plain text; the unified vocabulary owns all specials.
            raise ConfigError("text tokenizer must not define added/special tokens (the unified vocabulary owns them)")

    # ---- training -------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str] | None = None,
        *,
        files: Sequence[str] | None = None,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        min_frequency: int = 2,
        length: int | None = None,
        progress: bool = True,
    ) -> TextTokenizer:
        """Train a byte-level BPE from an iterator of strings or from text files (exactly one of the two).

        The result may have fewer than ``vocab_size`` ids when the corpus has too few distinct merges.
        """

        if (texts is None) == (files is None):
            raise ValueError("give exactly one of texts= or files=")
        if vocab_size < 257:
            raise ConfigError(f"vocab_size must be at least 257 (256 byte symbols + 1 merge), got {vocab_size}")
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=progress,
        )
        if files is not None:
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise ConfigError(f"text training file(s) not found: {', '.join(missing[:5])}")
            tk.train(list(files), trainer)
        else:
            tk.train_from_iterator(texts, trainer, length=length)
        return cls(tk)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> str:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TEXT_FILE)
        with atomic_path(path) as tmp:
            self._tk.save(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load from a folder holding tokenizer.json, or from the file itself."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, TEXT_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: text tokenizer not found")
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = TEXT_FILE) -> TextTokenizer:
        """From the contents of a tokenizer.json already read (``source`` names it in errors)."""

        try:
            tk = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the Rust side raises a plain Exception for any parse problem
            raise ConfigError(f"{source}: not a valid tokenizer.json ({str(e)[:200]})") from None
        return cls(tk)

    # ---- use ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=False)

    def encode(self, text: str) -> list[int]:
        """str -> local BPE ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Local BPE ids -> str (invalid UTF-8 from a partial sequence is replaced with U+FFFD)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ConfigError(f"text id {bad[0]} is outside the valid range [0, {self.vocab_size})")
        return self._tk.decode(ids, skip_special_tokens=False)

    def token_bytes(self, idx: int) -> bytes:
        """The bytes one id stands for (used for streaming text output token by token)."""
        table = _byte_decoder()
        return bytes(table[c] for c in self._tk.id_to_token(int(idx)))


_BYTE_DECODER: dict[str, int] | None = None


def _byte_decoder() -> dict[str, int]:
    """Inverse of the byte-level alphabet: printable stand-in character -> byte value."""
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        bs = (
            list(range(ord("!"), ord("~") + 1))
            + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1))
        )
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(bs, cs)}
    return _BYTE_DECODER


def iter_manifest_texts(manifest: str) -> Iterator[str]:
    """The text segments of a manifest, in order (for BPE training)."""

    for doc in iter_documents(manifest, check_files=False):
        for seg in doc.segments:
            if seg.kind == "text":
                yield seg.text
