"""The decoder-only early-fusion transformer, its configuration presets and KV cache."""

from chameleon_lite.model.config import PRESETS, ModelConfig, preset
from chameleon_lite.model.io import load_model
from chameleon_lite.model.kv_cache import KVCache
from chameleon_lite.model.transformer import Transformer, build_model, token_losses

__all__ = ["PRESETS", "KVCache", "ModelConfig", "Transformer", "build_model", "preset", "token_losses", "load_model"]
