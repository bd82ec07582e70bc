"""The three tokenizers of one folder loaded together, with the unified vocabulary they define.

Each tokenizer class offers ``load(dir)`` / ``save(dir)`` and maps its modality to *local* codes; the bundle
turns local codes into unified ids through :class:`~chameleon_lite.vocab.UnifiedVocab`.

- TextTokenizer (text.py):   encode(str) -> list[int] local BPE ids; decode(ids) -> str; vocab_size
- ImageTokenizer (image.py): encode(images) -> codes [B, h, w]; decode(codes) -> uint8 [B, H, W, 3];
                             codebook_size; tokens_per_image (N = h*w); grid (h, w)
- AudioTokenizer (audio.py): encode(waveform or path) -> codes [nq, frames]; decode(codes) -> float waveform;
                             num_levels (nq); codebook_size; sample_rate; frame_rate

File names and hashes of the folder belong to :mod:`chameleon_lite.bundle`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from chameleon_lite.bundle import AUDIO_CONFIG, IMAGE_CONFIG, VOCAB_FILE, codes_hash, size_field
from chameleon_lite.errors import ConfigError
from chameleon_lite.tokenizers.audio import AudioTokenizer
from chameleon_lite.tokenizers.image import ImageTokenizer
from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import UnifiedVocab


def vocab_from_tokenizer_dir(path: str) -> UnifiedVocab:
    """The vocabulary the tokenizer artifacts in ``path`` define (a missing image/audio tokenizer gives an empty range)."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: tokenizer folder not found")
    return _vocab(path, TextTokenizer.load(path).vocab_size)


def _vocab(path: str, text_size: int) -> UnifiedVocab:
    return UnifiedVocab(text_size=text_size, image_codebook=size_field(path, IMAGE_CONFIG, "codebook_size"),
                        audio_levels=size_field(path, AUDIO_CONFIG, "num_levels"),
                        audio_codebook=size_field(path, AUDIO_CONFIG, "codebook_size"))


def check_vocab_matches(path: str, vocab: UnifiedVocab, what: str = "model") -> None:
    """Refuse tokenizer artifacts in ``path`` whose vocabulary differs from ``vocab`` (e.g. a checkpoint's)."""
    have = vocab_from_tokenizer_dir(path)
    if have.hash != vocab.hash:
        raise ConfigError(
            f"{path}: the tokenizers define vocabulary {have.hash} ({have.size} ids) but the {what} was trained on "
            f"{vocab.hash} ({vocab.size} ids); use the tokenizers the {what} was trained with"
        )


@dataclasses.dataclass
class Tokenizers:
    """The three tokenizers plus the unified vocabulary they define, loaded from one folder."""

    vocab: UnifiedVocab
    text: Any
    image: Any | None = None
    audio: Any | None = None
    codes_hash: str = ""  # codes_hash() of the folder they were loaded from ("" when built in memory)

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "Tokenizers":
        if not os.path.isdir(path):
            raise ConfigError(f"{path}: tokenizer folder not found")
        text = TextTokenizer.load(path)
        image = audio = None
        if os.path.exists(os.path.join(path, IMAGE_CONFIG)):
            image = ImageTokenizer.load(path, device=device)
        if os.path.exists(os.path.join(path, AUDIO_CONFIG)):
            audio = AudioTokenizer.load(path, device=device)
        vocab = _vocab(path, text.vocab_size)  # the text tokenizer is read once
        vf = os.path.join(path, VOCAB_FILE)
        if os.path.exists(vf):
            saved = UnifiedVocab.load(vf)
            if saved.hash != vocab.hash:
                raise ConfigError(f"{vf}: vocab.json ({saved.hash}) does not match the tokenizer artifacts beside it ({vocab.hash})")
        return cls(vocab=vocab, text=text, image=image, audio=audio, codes_hash=codes_hash(path))
