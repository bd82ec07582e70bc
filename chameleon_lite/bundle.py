"""The exported model folder (ARCHITECTURE §7): its file names, the hashes that tie its parts together, and where the
shipped demo model lives. The bottom floor every reader and writer of such a folder uses; it imports no tokenizer
or model code, so the tokenizers, the model, the trainer and the generator all depend on it and not on each other.

A model folder holds ``config.json`` + ``model.safetensors`` (the transformer), the tokenizers (``tokenizer.json``,
``image_vq.*``, ``audio_codec.*``), ``vocab.json`` and optionally ``generation.json``; a tokenizer folder holds
the tokenizer files alone. Loading the tokenizers is :class:`chameleon_lite.tokenizers.loader.Tokenizers`; the
model, :func:`chameleon_lite.model.io.load_model`; the whole folder (model, tokenizers, sampling defaults), each
file read once, :func:`chameleon_lite.model.io.load_bundle`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from chameleon_lite.errors import ConfigError
from chameleon_lite.files import read_json, write_bytes_atomic

TEXT_FILE = "tokenizer.json"
IMAGE_WEIGHTS, IMAGE_CONFIG = "image_vq.safetensors", "image_vq.json"
AUDIO_WEIGHTS, AUDIO_CONFIG = "audio_codec.safetensors", "audio_codec.json"
VOCAB_FILE = "vocab.json"
GENERATION_FILE = "generation.json"
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_model")


def demo_model_dir() -> str:
    """The shipped demo model folder; a clear error when this install has none."""
    if not os.path.isfile(os.path.join(DEMO_DIR, "config.json")):
        raise ConfigError(
            f"no demo model is shipped in this install ({DEMO_DIR}); pass --model DIR "
            "(train one with `chameleon-lite quickstart`)"
        )
    return DEMO_DIR


def read_generation(folder: str) -> dict[str, Any]:
    """The content of a model folder's ``generation.json`` (its sampling defaults per kind of span; {} when it
    has none). Its fields are checked by :func:`chameleon_lite.generate.engine.sampling_from`."""
    path = os.path.join(folder, GENERATION_FILE)
    return read_json(path, "generation settings") if os.path.exists(path) else {}


PROMPT_FORMATS = ("plain", "chat")  # generation.json "format": how `generate` treats a prompt by default


def prompt_format(d: dict[str, Any], where: str) -> str:
    """A model's prompt format from its generation.json content ``d``: "chat" for a model trained on conversations
    (a prompt is a user turn), "plain" (the default) for one trained on documents (a prompt is text to continue)."""
    fmt = d.get("format", "plain")
    if fmt not in PROMPT_FORMATS:
        raise ConfigError(f"{where}: format must be one of {list(PROMPT_FORMATS)}, got {fmt!r}")
    return fmt


def set_prompt_format(folder: str, fmt: str) -> str:
    """Record a model folder's prompt format in its generation.json (its other settings kept)."""
    import json  # lazy: only writers of generation.json need it

    path = os.path.join(folder, GENERATION_FILE)
    d = read_generation(folder)
    prompt_format({"format": fmt}, path)
    d = {k: v for k, v in d.items() if k != "format"} | ({"format": fmt} if fmt != "plain" else {})
    write_bytes_atomic(path, (json.dumps(d, indent=2) + "\n").encode())
    return path


def write_safetensors_atomic(path: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Safetensors through write_bytes_atomic (safetensors' own save_file creates its file readable by its owner
    only, so a folder copied to other users would not load)."""
    from safetensors.torch import save  # lazy: `chameleon-lite --help` imports this module

    write_bytes_atomic(path, save(tensors, metadata=metadata))


def size_field(folder: str, name: str, key: str) -> int:
    """A positive integer field of a tokenizer config in ``folder`` (0 when the tokenizer is absent)."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return 0
    value = read_json(path, "tokenizer config").get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def makes_codes(key: str) -> bool:
    """Whether a tensor of an image or audio tokenizer (by state-dict key) takes part in making the codes: all but
    the decoder's. Decoder fine-tuning trains only the others; :func:`codes_hash` hashes only these."""
    return not key.startswith("decoder.")


def read_weights(path: str, what: str) -> dict[str, Any]:
    """The tensors of a safetensors file (read once, no code executed); a missing or damaged file is one
    :class:`ConfigError` naming it. ``what`` names the file in the message ("image tokenizer", ...)."""
    from safetensors import SafetensorError  # lazy: `chameleon-lite --help` imports this module
    from safetensors.torch import load_file  # lazy: as above

    if not os.path.exists(path):
        raise ConfigError(f"{path}: {what} weights not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None


def codes_hash_of(text: bytes, weights: dict[str, dict[str, Any] | None]) -> str:
    """:func:`codes_hash` of tokenizer files already read: the bytes of ``tokenizer.json`` and, per weights file
    name (IMAGE_WEIGHTS, AUDIO_WEIGHTS), its tensors as read or None when the folder has none."""
    import torch  # lazy: `chameleon-lite --help` imports this module

    h = hashlib.sha256(text)
    for name in (IMAGE_WEIGHTS, AUDIO_WEIGHTS):
        h.update(name.encode())
        state = weights.get(name)
        for key in sorted(filter(makes_codes, state or ())):
            t = state[key].contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_text_tokenizer(path: str) -> bytes:
    """The bytes of the ``tokenizer.json`` in folder ``path``."""
    text = os.path.join(path, TEXT_FILE)
    try:
        with open(text, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{text}: text tokenizer not found") from None
    except OSError as e:
        raise ConfigError(f"{text}: cannot read the text tokenizer ({e.strerror or e})") from None


def codes_hash(path: str) -> str:
    """sha256 (hex, 16 chars) of everything in the tokenizer folder ``path`` that decides which codes a text,
    picture or clip becomes: the BPE file and the image and audio tokenizers' encoder and quantizer tensors. The
    decoders are left out, so a tokenizer whose decoder was fine-tuned (``--finetune-decoder``) keeps its hash,
    while a retrained one of the same sizes (same vocabulary layout, other codes) gets a new one. A loader that has
    read the files already hashes what it read with :func:`codes_hash_of`."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: tokenizer folder not found")
    text = read_text_tokenizer(path)
    weights = {
        name: read_weights(os.path.join(path, name), "tokenizer") if os.path.exists(os.path.join(path, name)) else None
        for name in (IMAGE_WEIGHTS, AUDIO_WEIGHTS)
    }
    return codes_hash_of(text, weights)


def check_codes_match(path: str, expected: str, what: str = "model") -> str:
    """The codes hash of the tokenizers in ``path``; refuses them when their codes are not the ones the ``what``
    was trained on (``expected``; "" = not recorded, nothing to check)."""
    return check_codes(path, codes_hash(path), expected, what)


def check_codes(path: str, have: str, expected: str, what: str = "model") -> str:
    """Refuse tokenizers (in folder ``path``, with codes hash ``have``) that make other codes than the ones the
    ``what`` was trained on (``expected``; "" = not recorded, nothing to check); returns ``have``."""
    if expected and have != expected:
        missing = [
            os.path.join(path, w)
            for w, c in ((IMAGE_WEIGHTS, IMAGE_CONFIG), (AUDIO_WEIGHTS, AUDIO_CONFIG))
            if os.path.exists(os.path.join(path, c)) and not os.path.exists(os.path.join(path, w))
        ]
        note = f" (tokenizer weights not found: {', '.join(missing)})" if missing else ""
        raise ConfigError(
            f"{path}: these tokenizers make other codes (codes hash {have}) than the ones the {what} was trained on "
            f"({expected}), although the vocabulary sizes agree (a retrained tokenizer?); use the tokenizers the "
            f"{what} was trained with{note}"
        )
    return have
