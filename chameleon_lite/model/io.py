"""Exported models: ``model.safetensors`` + ``config.json`` + the tokenizer artifacts + ``vocab.json`` in one folder
(ARCHITECTURE §7). ``save_model_dir`` writes such a folder (``train.export.export_run`` does so from a training
run's checkpoint); ``load_model`` reads it back and refuses tokenizers whose vocabulary or codes are not the ones
the model was trained on; ``load_bundle`` reads the whole folder: model, tokenizers and sampling defaults. File names
and hashes belong to :mod:`chameleon_lite.bundle`."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from chameleon_lite.bundle import (
    AUDIO_CONFIG,
    AUDIO_WEIGHTS,
    IMAGE_CONFIG,
    IMAGE_WEIGHTS,
    TEXT_FILE,
    VOCAB_FILE,
    check_codes,
    check_codes_match,
    read_generation,
    write_safetensors_atomic,
)
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import MODEL, building_dir
from chameleon_lite.model.config import ModelConfig
from chameleon_lite.model.transformer import Transformer
from chameleon_lite.tokenizers.loader import Tokenizers, check_vocab_matches
from chameleon_lite.vocab import UnifiedVocab

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = (TEXT_FILE, IMAGE_WEIGHTS, IMAGE_CONFIG, AUDIO_WEIGHTS, AUDIO_CONFIG)


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no bound


def empty_model(
    cfg: ModelConfig, device: str | torch.device, source: str = "model config", dtype: torch.dtype = torch.float32
) -> Transformer:
    """The Transformer of ``cfg`` with uninitialised ``dtype`` weights (the RoPE tables stay fp32); a config larger
    than this machine's memory is refused before anything is allocated."""
    need = cfg.num_params() * dtype.itemsize
    if torch.device(device).type == "cpu" and need > _memory_bytes():
        raise ConfigError(
            f"{source}: the model has {cfg.num_params() / 1e9:.1f}B parameters ({need / 2**30:.1f} GiB in "
            f"{str(dtype).removeprefix('torch.')}), more than this machine's {_memory_bytes() / 2**30:.1f} GiB of "
            f"memory{' (bf16 weights take half: --dtype bf16)' if dtype == torch.float32 else ''}"
        )
    with torch.device("meta"):
        model = Transformer(cfg)
    for p in model.parameters():  # on the meta device: no memory is touched
        p.data = p.data.to(dtype)
    try:
        model.to_empty(device=device)
    except (RuntimeError, MemoryError) as e:
        raise ConfigError(
            f"{source}: cannot allocate the model's weights ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    model.init_buffers()
    return model


def save_model_dir(model: Transformer, vocab: UnifiedVocab, tokenizers_dir: str, out_dir: str) -> str:
    """Write ``model`` (a plain, unsharded Transformer) with its tokenizers into ``out_dir``, atomically: the folder
    is assembled beside the target and renamed into place. An existing non-export folder is never replaced."""
    cfg = model.config
    if cfg.vocab_hash != vocab.hash:
        raise ConfigError(f"model vocab_hash {cfg.vocab_hash!r} does not match the vocabulary {vocab.hash}")
    check_vocab_matches(tokenizers_dir, vocab)
    # the folder binds the model to its tokenizers' codes
    cfg = dataclasses.replace(cfg, codes_hash=check_codes_match(tokenizers_dir, cfg.codes_hash))
    out_dir = os.path.abspath(out_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with building_dir(out_dir, MODEL) as tmp:
        write_safetensors_atomic(
            os.path.join(tmp, WEIGHTS_FILE), state, {"vocab_hash": vocab.hash, "format": "chameleon-lite"}
        )
        cfg.save(os.path.join(tmp, CONFIG_FILE))
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizers_dir, name)
            if os.path.exists(src):
                shutil.copy2(src, os.path.join(tmp, name))
        vocab.save(os.path.join(tmp, VOCAB_FILE))
    return out_dir


def check_model_dir(model_dir: str, tokenizers: Tokenizers | None = None) -> ModelConfig:
    """The config of an exported model folder, after the checks every loader makes: vocab.json and the tokenizers
    must match the model's vocab hash, and the tokenizers its codes hash. ``tokenizers``: the folder's tokenizers
    when already loaded (their vocabulary and codes hash are compared instead of reading the files again)."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{model_dir}: model folder not found")
    cfg = ModelConfig.load(os.path.join(model_dir, CONFIG_FILE))
    if tokenizers is None:
        vocab = UnifiedVocab.load(os.path.join(model_dir, VOCAB_FILE))
    elif not tokenizers.vocab_file:
        raise ConfigError(f"{os.path.join(model_dir, VOCAB_FILE)}: vocab file not found")
    else:
        vocab = tokenizers.vocab  # Tokenizers.load checked vocab.json against the tokenizers
    if vocab.hash != cfg.vocab_hash:
        raise ConfigError(
            f"{model_dir}: vocab.json ({vocab.hash}) is not the vocabulary the model was trained on ({cfg.vocab_hash})"
        )
    if vocab.size != cfg.vocab_size:
        raise ConfigError(f"{model_dir}: vocab.json has {vocab.size} ids but the model has {cfg.vocab_size}")
    if tokenizers is None:
        check_vocab_matches(model_dir, vocab)
        check_codes_match(model_dir, cfg.codes_hash)
    else:
        check_codes(model_dir, tokenizers.codes_hash, cfg.codes_hash)
    return cfg


def read_model_weights(
    model_dir: str, tokenizers: Tokenizers | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and the weights (as stored, all in memory) of an exported model folder, after
    :func:`check_model_dir`'s checks."""
    cfg = check_model_dir(model_dir, tokenizers)
    path = os.path.join(model_dir, WEIGHTS_FILE)
    try:
        state = load_file(path, device="cpu")
    except FileNotFoundError:
        raise ConfigError(f"{path}: weights not found") from None
    except SafetensorError as e:
        raise ConfigError(f"{path}: not a valid safetensors file ({e})") from None
    return cfg, state


def _check_fit(own: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], source: str) -> None:
    missing = sorted(k for k in own if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in own)
    wrong = sorted(k for k in shapes if k in own and shapes[k] != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{source}: weights do not fit the model (missing: {missing[:3]}, unexpected: {unexpected[:3]}, "
            f"wrong shape: {[(k, shapes[k], tuple(own[k].shape)) for k in wrong[:3]]})"
        )


def load_weights(model: Transformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` (casting to its dtype); every tensor must be there, with its shape."""
    own = model.state_dict()
    _check_fit(own, {k: tuple(v.shape) for k, v in state.items()}, source)
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def load_model(
    model_dir: str,
    device: str | torch.device = "cpu",
    tokenizers: Tokenizers | None = None,
    dtype: torch.dtype = torch.float32,
) -> Transformer:
    """Read an exported model folder -> Transformer in eval mode on ``device`` with ``dtype`` weights (``.config``
    holds the ModelConfig). Refuses a folder whose vocab.json or tokenizers do not match the model's vocab hash
    (``tokenizers``: the folder's, when already loaded, so that no file is read twice). The weights are read one
    tensor at a time into the model: peak memory is the model plus its largest tensor, not twice the model."""
    cfg = check_model_dir(model_dir, tokenizers)
    path = os.path.join(model_dir, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: weights not found")
    model = empty_model(cfg, device, os.path.join(model_dir, CONFIG_FILE), dtype=dtype)
    own = model.state_dict()
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            _check_fit(own, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, path)
            with torch.no_grad():
                for k in f.keys():
                    own[k].copy_(f.get_tensor(k))
    except FileNotFoundError:
        raise ConfigError(f"{path}: weights not found") from None
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a valid safetensors file ({e})") from None
    return model.eval()


@dataclasses.dataclass
class Bundle:
    """An exported model folder, loaded: the transformer, the tokenizers it was trained with, and the sampling
    defaults of its ``generation.json`` as written there ({} when it has none)."""

    path: str
    model: Transformer
    tokenizers: Tokenizers
    generation: dict[str, Any]


def load_bundle(model_dir: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Bundle:
    """Load everything an exported model folder holds, each file read and hashed once, after the checks
    ``load_model`` makes (vocabulary and codes of the tokenizers against the model's); the transformer's weights in
    ``dtype``."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{model_dir}: model folder not found")
    tokenizers = Tokenizers.load(model_dir, device=str(device))
    model = load_model(model_dir, device=device, tokenizers=tokenizers, dtype=dtype)
    return Bundle(model_dir, model, tokenizers, read_generation(model_dir))
