"""What the three tokenizers share: artifact names, the bundle that loads them together, and the vocabulary
they define.

Each tokenizer class offers ``load(dir)`` / ``save(dir)`` and maps its modality to *local* codes; the bundle
turns local codes into unified ids through :class:`~chameleon_lite.vocab.UnifiedVocab`.

- TextTokenizer (text.py):   encode(str) -> list[int] local BPE ids; decode(ids) -> str; vocab_size
- ImageTokenizer (image.py): encode(images) -> codes [B, h, w]; decode(codes) -> uint8 [B, H, W, 3];
                             codebook_size; tokens_per_image (N = h*w); grid (h, w)
- AudioTokenizer (audio.py): encode(waveform or path) -> codes [nq, frames]; decode(codes) -> float waveform;
                             num_levels (nq); codebook_size; sample_rate; frame_rate
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from chameleon_lite.errors import ConfigError
from chameleon_lite.files import read_json, write_bytes_atomic, write_json_atomic  # noqa: F401  (re-exported)
from chameleon_lite.vocab import UnifiedVocab

TEXT_FILE = "tokenizer.json"
IMAGE_WEIGHTS, IMAGE_CONFIG = "image_vq.safetensors", "image_vq.json"
AUDIO_WEIGHTS, AUDIO_CONFIG = "audio_codec.safetensors", "audio_codec.json"
VOCAB_FILE = "vocab.json"


def write_safetensors_atomic(path: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Safetensors through write_bytes_atomic (safetensors' own save_file creates its file readable by its owner
    only, so a folder copied to other users would not load)."""
    from safetensors.torch import save

    write_bytes_atomic(path, save(tensors, metadata=metadata))


def _sizes_from_dir(path: str) -> tuple[int, int, int, int]:
    from chameleon_lite.tokenizers.text import TextTokenizer

    text = TextTokenizer.load(path)
    k_img = _size_field(path, IMAGE_CONFIG, "codebook_size")
    nq = _size_field(path, AUDIO_CONFIG, "num_levels")
    k_aud = _size_field(path, AUDIO_CONFIG, "codebook_size")
    return text.vocab_size, k_img, nq, k_aud


def _size_field(folder: str, name: str, key: str) -> int:
    """A positive integer field of a tokenizer config in ``folder`` (0 when the tokenizer is absent)."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return 0
    value = read_json(path, "tokenizer config").get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def vocab_from_tokenizer_dir(path: str) -> UnifiedVocab:
    """The vocabulary the tokenizer artifacts in ``path`` define (a missing image/audio tokenizer gives an empty range)."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: tokenizer folder not found")
    t, k_img, nq, k_aud = _sizes_from_dir(path)
    return UnifiedVocab(text_size=t, image_codebook=k_img, audio_levels=nq, audio_codebook=k_aud)


def check_vocab_matches(path: str, vocab: UnifiedVocab, what: str = "model") -> None:
    """Refuse tokenizer artifacts in ``path`` whose vocabulary differs from ``vocab`` (e.g. a checkpoint's)."""
    have = vocab_from_tokenizer_dir(path)
    if have.hash != vocab.hash:
        raise ConfigError(
            f"{path}: the tokenizers define vocabulary {have.hash} ({have.size} ids) but the {what} was trained on "
            f"{vocab.hash} ({vocab.size} ids); use the tokenizers the {what} was trained with"
        )


def makes_codes(key: str) -> bool:
    """Whether a tensor of an image or audio tokenizer (by state-dict key) takes part in making the codes: all but
    the decoder's. Decoder fine-tuning trains only the others; :func:`codes_hash` hashes only these."""
    return not key.startswith("decoder.")


def codes_hash(path: str) -> str:
    """sha256 (hex, 16 chars) of everything in the tokenizer folder ``path`` that decides which codes a text,
    picture or clip becomes: the BPE file and the image and audio tokenizers' encoder and quantizer tensors. The
    decoders are left out, so a tokenizer whose decoder was fine-tuned (``--finetune-decoder``) keeps its hash,
    while a retrained one of the same sizes (same vocabulary layout, other codes) gets a new one."""
    import hashlib

    import torch
    from safetensors import SafetensorError, safe_open

    if not os.path.isdir(path):
        raise ConfigError(f"{path}: tokenizer folder not found")
    h = hashlib.sha256()
    text = os.path.join(path, TEXT_FILE)
    try:
        with open(text, "rb") as f:
            h.update(f.read())
    except FileNotFoundError:
        raise ConfigError(f"{text}: text tokenizer not found") from None
    for name in (IMAGE_WEIGHTS, AUDIO_WEIGHTS):
        weights = os.path.join(path, name)
        h.update(name.encode())
        if not os.path.exists(weights):
            continue
        try:
            with safe_open(weights, framework="pt") as f:
                for key in sorted(filter(makes_codes, f.keys())):
                    t = f.get_tensor(key).contiguous()
                    h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
                    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{weights}: not a readable safetensors file ({e})") from None
    return h.hexdigest()[:16]


def check_codes_match(path: str, expected: str, what: str = "model") -> str:
    """The codes hash of the tokenizers in ``path``; refuses them when their codes are not the ones the ``what``
    was trained on (``expected``; "" = not recorded, nothing to check)."""
    have = codes_hash(path)
    if expected and have != expected:
        missing = [os.path.join(path, w) for w, c in ((IMAGE_WEIGHTS, IMAGE_CONFIG), (AUDIO_WEIGHTS, AUDIO_CONFIG))
                   if os.path.exists(os.path.join(path, c)) and not os.path.exists(os.path.join(path, w))]
        note = f" (tokenizer weights not found: {', '.join(missing)})" if missing else ""
        raise ConfigError(
            f"{path}: these tokenizers make other codes (codes hash {have}) than the ones the {what} was trained on "
            f"({expected}), although the vocabulary sizes agree (a retrained tokenizer?); use the tokenizers the "
            f"{what} was trained with{note}"
        )
    return have


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
        from chameleon_lite.tokenizers.text import TextTokenizer

        if not os.path.isdir(path):
            raise ConfigError(f"{path}: tokenizer folder not found")
        text = TextTokenizer.load(path)
        image = audio = None
        if os.path.exists(os.path.join(path, IMAGE_CONFIG)):
            from chameleon_lite.tokenizers.image import ImageTokenizer

            image = ImageTokenizer.load(path, device=device)
        if os.path.exists(os.path.join(path, AUDIO_CONFIG)):
            from chameleon_lite.tokenizers.audio import AudioTokenizer

            audio = AudioTokenizer.load(path, device=device)
        vocab = vocab_from_tokenizer_dir(path)
        vf = os.path.join(path, VOCAB_FILE)
        if os.path.exists(vf):
            saved = UnifiedVocab.load(vf)
            if saved.hash != vocab.hash:
                raise ConfigError(f"{vf}: vocab.json ({saved.hash}) does not match the tokenizer artifacts beside it ({vocab.hash})")
        return cls(vocab=vocab, text=text, image=image, audio=audio, codes_hash=codes_hash(path))
