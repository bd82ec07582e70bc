"""Model configuration: one dataclass, validated, JSON round-trip, and the named size presets."""

from __future__ import annotations

import dataclasses
from typing import Any

from chameleon_lite.configs import config_from_dict
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import read_json, write_json_atomic

NORM_PLACEMENTS = ("pre", "post")
QK_NORM_TYPES = ("rms", "head_layernorm")
UNTIED_PARTS = ("attention", "ffn", "norms")  # what a modality-untied model gives each modality its own copy of


@dataclasses.dataclass
class ModelConfig:
    """Shape and options of the decoder-only transformer.

    Args:
        vocab_size: size of the unified vocabulary (ids in [0, vocab_size)).
        vocab_hash: hash of the UnifiedVocab the model is trained on ("" when not yet bound to a vocabulary).
        codes_hash: hash of the tokenizers' code-making parts the model is trained on (bundle.codes_hash;
            "" = not recorded). The vocab hash covers only the layout, so this is what tells a retrained tokenizer
            of the same sizes apart.
        dim: model width.
        n_layers: number of transformer blocks.
        n_heads: query heads; head_dim = dim // n_heads.
        n_kv_heads: key/value heads (GQA); must divide n_heads.
        ffn_dim: SwiGLU hidden width.
        norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        max_seq_len: longest position + 1 the RoPE table covers (positions restart per packed document).
        qk_norm: normalise q and k per head before RoPE (Chameleon's remedy for logit drift).
        qk_norm_type: "rms" (an RMSNorm over head_dim whose gain all heads share) or "head_layernorm" (Chameleon's:
            a LayerNorm over head_dim, mean removed, with its own gain and bias for every head).
        qk_norm_eps: epsilon of the "head_layernorm" q/k norm (Chameleon: 1e-5 whatever norm_eps is).
        norm_placement: "pre" (x + f(norm(x))) or "post" (x + norm(f(x)), Chameleon's swin-norm).
        tie_embeddings: share the input embedding with the output projection.
        init_std: standard deviation of the normal init of the linear weights.
        untied: modality-untied weights (Mixture-of-Transformers): a comma-separated subset of "attention" (q/k/v
            and output projections, q/k norms), "ffn", "norms" (the blocks' two norms), or "all"; each modality
            (text, image, audio) gets its own copy, chosen by the token's id range (no learned router); attention
            stays global over the whole sequence. "" (default): one set of weights for every token.
        image_start, audio_start: the first image id and the first audio id of the vocabulary (ids below
            image_start are text and specials); what routes the tokens of an untied model.
    """

    vocab_size: int = 1024
    vocab_hash: str = ""
    codes_hash: str = ""
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 384
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    qk_norm: bool = True
    qk_norm_type: str = "rms"
    qk_norm_eps: float = 1e-5
    norm_placement: str = "pre"
    tie_embeddings: bool = False
    init_std: float = 0.02
    untied: str = ""
    image_start: int = 0
    audio_start: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"model config: {name} must be a positive int, got {v!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model config: dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model config: head_dim={self.head_dim} must be even for RoPE")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ConfigError(
                f"model config: norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}"
            )
        if self.qk_norm_type not in QK_NORM_TYPES:
            raise ConfigError(f"model config: qk_norm_type must be one of {QK_NORM_TYPES}, got {self.qk_norm_type!r}")
        for name in ("norm_eps", "rope_theta", "init_std", "qk_norm_eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"model config: {name} must be a positive number, got {v!r}")
        for name in ("qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model config: {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.untied, str) or not set(self.untied_parts) <= set(UNTIED_PARTS):
            raise ConfigError(f"model config: untied must be a comma-separated subset of {UNTIED_PARTS} or 'all', "
                              f"got {self.untied!r}")  # fmt: skip
        for name in ("image_start", "audio_start"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"model config: {name} must be a non-negative int, got {v!r}")
        if self.untied_parts and not 0 < self.image_start <= self.audio_start <= self.vocab_size:
            raise ConfigError(
                f"model config: an untied model needs 0 < image_start <= audio_start <= vocab_size (the vocabulary's "
                f"ranges), got {self.image_start}, {self.audio_start}"
            )
        for name in ("vocab_hash", "codes_hash"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"model config: {name} must be a string, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def untied_parts(self) -> tuple[str, ...]:
        """The parts each modality has its own copy of (from ``untied``)."""
        if not isinstance(self.untied, str):
            return ()
        if self.untied.strip() == "all":
            return UNTIED_PARTS
        return tuple(p.strip() for p in self.untied.split(",") if p.strip())

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count from the shapes alone (matches the built module); without embedding excludes the input
        embedding and the output projection."""
        hd = self.head_dim
        copies = {p: 3 if p in self.untied_parts else 1 for p in UNTIED_PARTS}
        attn = self.dim * self.n_heads * hd * 2 + self.dim * self.n_kv_heads * hd * 2
        if self.qk_norm:
            attn += 2 * hd if self.qk_norm_type == "rms" else 2 * (self.n_heads + self.n_kv_heads) * hd
        ffn = 3 * self.dim * self.ffn_dim
        block = attn * copies["attention"] + ffn * copies["ffn"] + 2 * self.dim * copies["norms"]
        n = self.n_layers * block + self.dim
        if not include_embedding:
            return n
        tables = 1 if self.tie_embeddings else 2  # input embedding and output projection
        return n + tables * self.vocab_size * self.dim

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight use plus causal attention scores."""
        # The output projection is a matmul even when tied; the embedding lookup is not. A token of an untied model
        # runs one modality's copy: the FLOPs of the dense model.
        dense = dataclasses.replace(self, untied="").num_params(include_embedding=False) + self.vocab_size * self.dim
        # Attention: q·k and p·v, each 2*L*dim per token forward, halved by causality, x3 for backward.
        attn = 6 * self.n_layers * self.dim * seq_len
        return 6.0 * dense + attn

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ModelConfig:
        return config_from_dict(cls, d, source, "model config")

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> ModelConfig:
        return cls.from_dict(read_json(path, "model config"), source=path)


# Named sizes. vocab_size here is a stand-in used for the parameter counts; training replaces it with the
# vocabulary of the data (the embedding is the only part that changes).
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(vocab_size=1024, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=2048),
    "tiny": dict(vocab_size=8192, dim=256, n_layers=8, n_heads=4, n_kv_heads=4, ffn_dim=704, max_seq_len=4096),
    "small": dict(vocab_size=32768, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048, max_seq_len=4096),
    "base": dict(vocab_size=65536, dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, ffn_dim=5632, max_seq_len=4096),
    # Chameleon-7B shapes (LLaMA-2-7B widths, 65536 ids, full MHA, QK-norm).
    "7b": dict(vocab_size=65536, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, max_seq_len=4096),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")
