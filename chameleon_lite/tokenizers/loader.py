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

from chameleon_lite.bundle import (
    AUDIO_CONFIG,
    AUDIO_WEIGHTS,
    IMAGE_CONFIG,
    IMAGE_WEIGHTS,
    TEXT_FILE,
    VOCAB_FILE,
    codes_hash_of,
    read_text_tokenizer,
    read_weights,
    size_field,
)
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import read_json
from chameleon_lite.tokenizers.audio import AudioTokenizer
from chameleon_lite.tokenizers.chameleon_vq import ChameleonImageTokenizer
from chameleon_lite.tokenizers.image import ImageTokenizer
from chameleon_lite.tokenizers.text import TextTokenizer
from chameleon_lite.vocab import UnifiedVocab


def vocab_from_tokenizer_dir(path: str) -> UnifiedVocab:
    """The vocabulary the tokenizer artifacts in ``path`` define (a missing image/audio tokenizer gives an empty range)."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: tokenizer folder not found")
    return _vocab(path, TextTokenizer.load(path).vocab_size)


def _vocab(path: str, text_size: int) -> UnifiedVocab:
    return UnifiedVocab(
        text_size=text_size,
        image_codebook=size_field(path, IMAGE_CONFIG, "codebook_size"),
        audio_levels=size_field(path, AUDIO_CONFIG, "num_levels"),
        audio_codebook=size_field(path, AUDIO_CONFIG, "codebook_size"),
    )


def check_vocab_matches(path: str, vocab: UnifiedVocab, what: str = "model") -> None:
    """Refuse tokenizer artifacts in ``path`` whose vocabulary differs from ``vocab`` (e.g. a checkpoint's)."""
    have = vocab_from_tokenizer_dir(path)
    if have.hash != vocab.hash:
        raise ConfigError(
            f"{path}: the tokenizers define vocabulary {have.hash} ({have.size} ids) but the {what} was trained on "
            f"{vocab.hash} ({vocab.size} ids); use the tokenizers the {what} was trained with"
        )


def load_image_tokenizer(path: str, device: str = "cpu", state: dict[str, Any] | None = None) -> Any:
    """The image tokenizer of folder ``path``: this project's VQ, or Chameleon's VQGAN when image_vq.json names that
    backend (a folder converted from a transformers Chameleon checkpoint). ``state``: its weights, already read."""
    config = read_json(os.path.join(path, IMAGE_CONFIG), "image tokenizer config")
    kind = ChameleonImageTokenizer if "backend" in config else ImageTokenizer
    return kind.load(path, device=device, state=state, config=config)


@dataclasses.dataclass
class Tokenizers:
    """The three tokenizers plus the unified vocabulary they define, loaded from one folder."""

    vocab: UnifiedVocab
    text: Any
    image: Any | None = None
    audio: Any | None = None
    codes_hash: str = ""  # bundle.codes_hash() of the folder they were loaded from ("" when built in memory)
    vocab_file: bool = False  # whether the folder holds a vocab.json (checked against the tokenizers when it does)

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> Tokenizers:
        """Each file of the folder is read once: the codes hash is taken from the bytes and tensors the tokenizers
        were built from, and the vocabulary from their configs."""
        if not os.path.isdir(path):
            raise ConfigError(f"{path}: tokenizer folder not found")
        text_bytes = read_text_tokenizer(path)
        text = TextTokenizer.from_bytes(text_bytes, os.path.join(path, TEXT_FILE))
        weights: dict[str, dict[str, Any] | None] = {IMAGE_WEIGHTS: None, AUDIO_WEIGHTS: None}
        image = audio = None
        if os.path.exists(os.path.join(path, IMAGE_CONFIG)):
            weights[IMAGE_WEIGHTS] = read_weights(os.path.join(path, IMAGE_WEIGHTS), "image tokenizer")
            image = load_image_tokenizer(path, device=device, state=weights[IMAGE_WEIGHTS])
        if os.path.exists(os.path.join(path, AUDIO_CONFIG)):
            weights[AUDIO_WEIGHTS] = read_weights(os.path.join(path, AUDIO_WEIGHTS), "audio codec")
            audio = AudioTokenizer.load(path, device=device, state=weights[AUDIO_WEIGHTS])
        vocab = UnifiedVocab(
            text_size=text.vocab_size,
            image_codebook=image.codebook_size if image else 0,
            audio_levels=audio.num_levels if audio else 0,
            audio_codebook=audio.codebook_size if audio else 0,
        )
        vf = os.path.join(path, VOCAB_FILE)
        if os.path.exists(vf):
            saved = UnifiedVocab.load(vf)
            if saved.hash != vocab.hash:
                raise ConfigError(
                    f"{vf}: vocab.json ({saved.hash}) does not match the tokenizer artifacts beside it ({vocab.hash})"
                )
        return cls(
            vocab=vocab,
            text=text,
            image=image,
            audio=audio,
            codes_hash=codes_hash_of(text_bytes, weights),
            vocab_file=os.path.exists(vf),
        )
