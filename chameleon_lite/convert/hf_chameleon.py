"""The Hugging Face transformers Chameleon format (Chameleon, Anole, Lumina-mGPT weights), both directions.

**In** (:func:`convert_from_hf`): a transformers Chameleon folder (config.json with its ``vocabulary_map``,
safetensors shards, tokenizer.json) becomes an exported model folder of this project. Every tensor of the checkpoint
is consumed; a missing, unexpected or misshapen one refuses the folder before anything is written. Tensors stream
one at a time (a few at once for the fused q/k/v and gate/up projections), so peak memory is about the largest
tensor, not the checkpoint.

The vocabulary: Chameleon's ids put the image codes at the ids its vocabulary map gives them (``IMGIMG…Z`` names)
and its specials where its tokenizer has them; this project's :class:`UnifiedVocab` keeps every modality in one
contiguous range (what the modality state machine and the fused sampler's allowed ranges rely on). Conversion maps
each id of one onto an id of the other (:class:`VocabMap`) and moves the rows of the embedding and of the output
head with it, an exact permutation: the converted model computes the same logits, indexed by the mapped ids.
The map is kept in the folder's ``convert.json``, so prompts in Chameleon ids and their logits translate both ways.

**Out** (:func:`convert_to_hf`): an exported model becomes a folder ``transformers`` loads with
``ChameleonForConditionalGeneration.from_pretrained``: the unified ids are its ids, image codes are named as
Chameleon names them (so transformers' image-token logic finds them), audio codes become ordinary extra vocabulary
entries. It needs the model's q/k norm to be Chameleon's per-head LayerNorm (``qk_norm_type="head_layernorm"``):
an RMS q/k norm has no exact transformers equivalent and is refused rather than approximated.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from chameleon_lite.bundle import IMAGE_CONFIG, IMAGE_WEIGHTS, TEXT_FILE, VOCAB_FILE, codes_hash, makes_codes
from chameleon_lite.convert.stream import SafetensorsWriter, ShardedReader
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import MODEL, OutputKind, building_dir, check_output_dir, read_json, write_json_atomic
from chameleon_lite.model.config import ModelConfig
from chameleon_lite.model.io import CONFIG_FILE
from chameleon_lite.model.transformer import Transformer
from chameleon_lite.tokenizers.chameleon_vq import (
    BACKEND,
    HF_PREFIX,
    ChameleonImageTokenizer,
    ChameleonVQConfig,
    from_hf_state,
    load_original,
)
from chameleon_lite.tokenizers.loader import check_vocab_matches
from chameleon_lite.vocab import LAYOUT_SPECIALS, UnifiedVocab

CONVERT_FILE = "convert.json"  # provenance and the id map of a converted folder
HF_MARK = "chameleon_lite.json"  # what marks a transformers folder this project wrote
HF_EXPORT = OutputKind(
    "a transformers folder",
    "chameleon-lite convert to-hf",
    HF_MARK,
    (
        HF_MARK,
        "config.json",
        "model*.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "generation_config.json",
    ),
)
IMAGE_PREFIX, IMAGE_SUFFIX = "IMGIMG", "Z"
BOI_NAME, EOI_NAME = "<racm3:break>", "<eoss>"  # Chameleon's image start and end tokens
WEIGHTS = "model.safetensors"


# ---- the vocabulary ------------------------------------------------------------------------------------------------
def image_code_of(name: str) -> int | None:
    """The VQ code an ``IMGIMG…Z`` vocabulary entry stands for (its digits written as letters A-J), else None."""
    if not (name.startswith(IMAGE_PREFIX) and name.endswith(IMAGE_SUFFIX)) or len(name) <= len(IMAGE_PREFIX) + 1:
        return None
    body = name[len(IMAGE_PREFIX) : -len(IMAGE_SUFFIX)]
    if not all("A" <= c <= "J" for c in body):
        return None
    return int("".join(str(ord(c) - ord("A")) for c in body))


def image_name_of(code: int) -> str:
    return IMAGE_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(code)) + IMAGE_SUFFIX


@dataclasses.dataclass(frozen=True)
class VocabMap:
    """This project's vocabulary for a Chameleon one: ``hf_ids[u]`` is the Chameleon id of unified id ``u`` (-1 for
    an id Chameleon has no row for: the audio markers and reserved specials), ``names[u]`` its Chameleon name."""

    vocab: UnifiedVocab
    hf_ids: tuple[int, ...]
    names: tuple[str, ...]
    hf_size: int

    def to_unified(self) -> torch.Tensor:
        """[hf_size] int64: the unified id of every Chameleon id (see :func:`invert_map`)."""
        return invert_map(torch.tensor(self.hf_ids), self.hf_size)

    def rows(self) -> torch.Tensor:
        return torch.tensor(self.hf_ids, dtype=torch.int64)


def invert_map(unified_to_hf: torch.Tensor, hf_size: int) -> torch.Tensor:
    """[hf_size] int64: the unified id of every Chameleon id, from the unified -> Chameleon map (-1 where none; a
    Chameleon id two unified ids share, e.g. a pad that is also bos, maps to the first)."""
    t = torch.full((hf_size,), -1, dtype=torch.int64)
    for u in reversed(range(len(unified_to_hf))):
        if int(unified_to_hf[u]) >= 0:
            t[int(unified_to_hf[u])] = u
    return t


def vocab_map_from_hf(hf: dict[str, Any], source: str) -> VocabMap:
    """The :class:`VocabMap` of a transformers Chameleon config (its ``vocabulary_map`` and special token ids)."""
    size = hf["vocab_size"]
    vmap = hf.get("vocabulary_map")
    if not isinstance(vmap, dict) or not vmap:
        raise ConfigError(f"{source}: no vocabulary_map (the name -> id map of the Chameleon tokenizer)")
    names: dict[int, str] = {}
    for name, i in vmap.items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size:
            raise ConfigError(f"{source}: vocabulary_map gives {name!r} the id {i!r}, outside [0, {size})")
        if i in names:
            raise ConfigError(f"{source}: vocabulary_map gives the id {i} to both {names[i]!r} and {name!r}")
        names[i] = name
    codes = {i: c for i, n in names.items() if (c := image_code_of(n)) is not None}
    k = len(codes)
    if sorted(codes.values()) != list(range(k)):
        raise ConfigError(f"{source}: the {k} image tokens (IMGIMG…) do not name the codes 0..{k - 1} once each")

    def special(key: str, name: str | None, required: bool) -> int:
        i = hf.get(key) if key else None
        if i is None and name is not None:
            i = vmap.get(name)
        if i is None:
            if required:
                raise ConfigError(f"{source}: no {key or name} in the config or its vocabulary_map")
            return -1
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < size or i in codes:
            raise ConfigError(f"{source}: {key or name} = {i!r} is not a text or special id of the vocabulary")
        return i

    specials = [
        special("pad_token_id", "<pad>", False),
        special("bos_token_id", "<s>", True),
        special("eos_token_id", "</s>", True),
        special("", BOI_NAME, k > 0),
        special("", EOI_NAME, k > 0),
        -1,  # <boa>: Chameleon has no audio
        -1,  # <eoa>
    ]
    vocab = UnifiedVocab(
        text_size=size - k - len({i for i in specials if i >= 0}), image_codebook=k, audio_levels=0, audio_codebook=0
    )
    used = set(specials) | set(codes)
    text = [i for i in range(size) if i not in used]
    by_code = sorted(codes, key=codes.get)
    hf_ids = specials + [-1] * (vocab.num_special - LAYOUT_SPECIALS) + text + by_code
    assert len(hf_ids) == vocab.size
    return VocabMap(vocab, tuple(hf_ids), tuple(names.get(i, "") if i >= 0 else "" for i in hf_ids), size)


def text_tokenizer_from_hf(data: bytes, vm: VocabMap, source: str) -> bytes:
    """This project's tokenizer.json for the text range of ``vm``, from a Chameleon tokenizer.json: the same
    byte-level BPE (pre-tokenizer, merges, decoder) with its ids renumbered to the text range's local ids. Chameleon's
    added tokens (its specials, image names, reserved entries) are not matched inside text any more: the unified
    vocabulary owns the specials, and a reserved entry stays an ordinary vocabulary entry the model may write."""
    try:
        tk = json.loads(data)
        model = tk["model"]
        vocab, merges = model["vocab"], model.get("merges", [])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{source}: not a transformers tokenizer.json ({type(e).__name__}: {e})") from None
    if model.get("type") != "BPE" or not isinstance(vocab, dict):
        raise ConfigError(f"{source}: the text model is {model.get('type')!r}, this project reads a BPE")
    decoders = [tk.get("decoder") or {}]
    decoders += decoders[0].get("decoders") or []
    if not any(d.get("type") == "ByteLevel" for d in decoders if isinstance(d, dict)):
        raise ConfigError(f"{source}: not a byte-level BPE (its decoder is {tk.get('decoder')!r})")
    name_of = {i: n for n, i in vocab.items()}
    for a in tk.get("added_tokens") or []:
        name_of.setdefault(a.get("id"), a.get("content"))
    lo, hi = vm.vocab.text_range()
    local: dict[str, int] = {}
    for j, hf_id in enumerate(vm.hf_ids[lo:hi]):
        name = name_of.get(hf_id) or f"<unused_{hf_id}>"
        if name in local:
            raise ConfigError(f"{source}: the token {name!r} has two ids")
        local[name] = j

    def keep(m: Any) -> bool:
        parts = m.split(" ") if isinstance(m, str) else list(m)
        return len(parts) == 2 and all(p in local for p in parts) and "".join(parts) in local

    model = dict(model, vocab=local, merges=[m for m in merges if keep(m)])
    out = dict(tk, model=model, added_tokens=[], post_processor=None, padding=None, truncation=None)
    return json.dumps(out, ensure_ascii=False).encode()


# ---- the transformer ----------------------------------------------------------------------------------------------
def model_config_from_hf(hf: dict[str, Any], vocab: UnifiedVocab, source: str) -> ModelConfig:
    """The ModelConfig of a transformers Chameleon config; an option this engine does not run is refused."""
    if hf.get("model_type") != "chameleon":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, not a transformers Chameleon config")
    for key, ok in (
        ("hidden_act", lambda v: v in (None, "silu")),
        ("attention_bias", lambda v: not v),
        ("mlp_bias", lambda v: not v),
    ):
        if not ok(hf.get(key)):
            raise ConfigError(f"{source}: {key} = {hf.get(key)!r} is not supported (Chameleon uses silu, no biases)")
    rope = dict(hf.get("rope_parameters") or {})
    if not rope:  # transformers 4.x wrote rope_theta and rope_scaling at the top level
        rope = {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
        if hf.get("rope_scaling"):
            rope["rope_type"] = hf["rope_scaling"].get("rope_type") or hf["rope_scaling"].get("type")
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{source}: RoPE type {rope.get('rope_type')!r} is not supported (only the default RoPE)")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // heads):
        raise ConfigError(f"{source}: head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
    return ModelConfig(
        vocab_size=vocab.size,
        vocab_hash=vocab.hash,
        dim=dim,
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        ffn_dim=hf["intermediate_size"],
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        max_seq_len=hf.get("max_position_embeddings", 4096),
        qk_norm=True,
        qk_norm_type="head_layernorm",
        qk_norm_eps=1e-5,  # transformers' Chameleon q/k LayerNorm uses 1e-5 whatever rms_norm_eps is
        norm_placement="post" if hf.get("swin_norm") else "pre",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


@dataclasses.dataclass(frozen=True)
class Piece:
    """One tensor of the converted model: its name, dtype, shape, the source tensors it is made of, and how."""

    name: str
    sources: tuple[str, ...]
    make: Callable[[list[torch.Tensor]], torch.Tensor]
    shape: tuple[int, ...]


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(ts, 0)


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0].reshape(-1)


def _same(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0]


def _rows(rows: torch.Tensor) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """Gather the rows of an embedding or output head by Chameleon id; rows with no Chameleon id (-1) are zero."""

    def make(ts: list[torch.Tensor]) -> torch.Tensor:
        out = ts[0].index_select(0, rows.clamp(min=0))
        out[rows < 0] = 0
        return out

    return make


def pieces_from_hf(cfg: ModelConfig, vm: VocabMap) -> list[Piece]:
    """How each tensor of this project's Transformer is made from the transformers checkpoint, in state-dict order."""
    d, hd, f = cfg.dim, cfg.head_dim, cfg.ffn_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    rows = vm.rows()
    out = [Piece("tok_embeddings.weight", ("model.embed_tokens.weight",), _rows(rows), (cfg.vocab_size, d))]
    for i in range(cfg.n_layers):
        a, m, us = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"layers.{i}."
        out += [
            Piece(us + "attention.wqkv.weight", (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                  _cat, (q + 2 * kv, d)),
            Piece(us + "attention.wo.weight", (a + "o_proj.weight",), _same, (d, q)),
            Piece(us + "attention.q_norm.weight", (a + "q_norm.weight",), _flat, (q,)),
            Piece(us + "attention.q_norm.bias", (a + "q_norm.bias",), _flat, (q,)),
            Piece(us + "attention.k_norm.weight", (a + "k_norm.weight",), _flat, (kv,)),
            Piece(us + "attention.k_norm.bias", (a + "k_norm.bias",), _flat, (kv,)),
            Piece(us + "feed_forward.w13.weight", (m + "gate_proj.weight", m + "up_proj.weight"), _cat, (2 * f, d)),
            Piece(us + "feed_forward.w2.weight", (m + "down_proj.weight",), _same, (d, f)),
            Piece(us + "attention_norm.weight", (f"model.layers.{i}.input_layernorm.weight",), _same, (d,)),
            Piece(us + "ffn_norm.weight", (f"model.layers.{i}.post_attention_layernorm.weight",), _same, (d,)),
        ]  # fmt: skip
    out.append(Piece("norm.weight", ("model.norm.weight",), _same, (d,)))
    if not cfg.tie_embeddings:
        out.append(Piece("output.weight", ("lm_head.weight",), _rows(rows), (cfg.vocab_size, d)))
    return out


def hf_source_shapes(cfg: ModelConfig, hf_size: int) -> dict[str, tuple[int, ...]]:
    """The shape every transformer tensor of a transformers Chameleon checkpoint of ``cfg`` must have."""
    d, hd, f = cfg.dim, cfg.head_dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (hf_size, d), "model.norm.weight": (d,)}
    for i in range(cfg.n_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        shapes |= {
            a + "q_proj.weight": (cfg.n_heads * hd, d),
            a + "k_proj.weight": (cfg.n_kv_heads * hd, d),
            a + "v_proj.weight": (cfg.n_kv_heads * hd, d),
            a + "o_proj.weight": (d, cfg.n_heads * hd),
            a + "q_norm.weight": (cfg.n_heads, hd),
            a + "q_norm.bias": (cfg.n_heads, hd),
            a + "k_norm.weight": (cfg.n_kv_heads, hd),
            a + "k_norm.bias": (cfg.n_kv_heads, hd),
            m + "gate_proj.weight": (f, d),
            m + "up_proj.weight": (f, d),
            m + "down_proj.weight": (d, f),
            f"model.layers.{i}.input_layernorm.weight": (d,),
            f"model.layers.{i}.post_attention_layernorm.weight": (d,),
        }
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (hf_size, d)
    return shapes


DTYPE_CHOICES = {"source": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_keys(reader: ShardedReader, want: dict[str, tuple[int, ...]], extra_ok: Callable[[str], bool]) -> None:
    have = set(reader.keys())
    missing = sorted(set(want) - have)
    unexpected = sorted(k for k in have - set(want) if not extra_ok(k))
    wrong = sorted(k for k in set(want) & have if tuple(reader.reader(k).shape(k)) != want[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (first {k!r}: {list(reader.reader(k).shape(k))}, "
                         f"the config says {list(want[k])})")  # fmt: skip
        raise ConfigError(f"{reader.folder}: the weights do not fit config.json: " + "; ".join(parts))


def _progress(total: int, desc: str):
    from tqdm import tqdm  # lazy: only a conversion draws a bar

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def stream_pieces(
    reader: ShardedReader, pieces: list[Piece], path: str, dtype: torch.dtype | None, metadata: dict[str, str]
) -> None:
    """Write ``pieces`` into the safetensors file ``path``, each made from its sources as read (one piece's
    sources in memory at a time), cast to ``dtype`` (None: the source's dtype)."""
    dt = {p.name: dtype or reader.reader(p.sources[0]).dtype(p.sources[0]) for p in pieces}
    w = SafetensorsWriter(path, [(p.name, dt[p.name], p.shape) for p in pieces], metadata)
    try:
        bar = _progress(sum(reader.reader(s).nbytes(s) for p in pieces for s in p.sources), "convert")
        for p in pieces:
            t = p.make([reader.get(s) for s in p.sources]).to(dt[p.name])
            w.write(p.name, t)
            bar.update(sum(reader.reader(s).nbytes(s) for s in p.sources))
            del t
        bar.close()
        w.close()
    except BaseException:
        w.abort()
        raise


def convert_from_hf(
    src: str, out: str, dtype: str = "source", vqgan: Callable[[ShardedReader, dict, str, int], Any] | None = None
) -> dict[str, Any]:
    """Convert the transformers Chameleon folder ``src`` into the exported model folder ``out``. Returns a summary
    (sizes, tensors, bytes, the largest shard). ``vqgan``: writes the image tokenizer into the folder being
    assembled from the checkpoint's ``model.vqmodel.*`` tensors (default: :func:`vq_loader` ())."""
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise ConfigError(f"{src}: folder not found")
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    cfg_path = os.path.join(src, "config.json")
    hf = read_json(cfg_path, "transformers config")
    vm = vocab_map_from_hf(hf, cfg_path)
    cfg = model_config_from_hf(hf, vm.vocab, cfg_path)
    tok_path = os.path.join(src, TEXT_FILE)
    if not os.path.isfile(tok_path):
        raise ConfigError(f"{tok_path}: the Chameleon tokenizer is not there (tokenizer.json)")
    with open(tok_path, "rb") as fh:
        text_json = text_tokenizer_from_hf(fh.read(), vm, tok_path)
    out = os.path.abspath(out)
    check_output_dir(out, MODEL)
    with ShardedReader(src) as reader:
        _check_keys(reader, hf_source_shapes(cfg, vm.hf_size), lambda k: k.startswith(HF_PREFIX))
        with building_dir(out, MODEL) as tmp:
            with open(os.path.join(tmp, TEXT_FILE), "wb") as fh:
                fh.write(text_json)
            if vm.vocab.image_codebook or any(k.startswith(HF_PREFIX) for k in reader.keys()):
                (vqgan or vq_loader())(reader, hf.get("vq_config") or {}, tmp, vm.vocab.image_codebook)
            pieces = pieces_from_hf(cfg, vm)
            stream_pieces(
                reader, pieces, os.path.join(tmp, WEIGHTS), DTYPE_CHOICES[dtype],
                {"vocab_hash": vm.vocab.hash, "format": "chameleon-lite"},
            )  # fmt: skip
            cfg = dataclasses.replace(cfg, codes_hash=codes_hash(tmp))
            cfg.save(os.path.join(tmp, "config.json"))
            vm.vocab.save(os.path.join(tmp, VOCAB_FILE))
            summary = {
                "source": "transformers Chameleon",
                "source_folder": os.path.basename(src),
                "dtype": dtype,
                "tensors": len(reader.keys()),
                "bytes": sum(r.nbytes(k) for r in reader.readers.values() for k in r.keys()),
                "largest_shard_bytes": reader.largest_shard_bytes(),
                "hf_vocab_size": vm.hf_size,
                "unified_to_hf": list(vm.hf_ids),
            }
            write_json_atomic(os.path.join(tmp, CONVERT_FILE), summary)
    return summary


def vq_loader(vqgan_ckpt: str | None = None) -> Callable[[ShardedReader, dict, str, int], None]:
    """The image tokenizer of a conversion: the encoder a transformers checkpoint holds (``model.vqmodel.*``), or,
    with ``vqgan_ckpt`` (the release's ``tokenizer/vqgan.ckpt``), the whole VQGAN, encoder and decoder, after
    checking that its encoder side is the checkpoint's (a different tokenizer would make other codes); for a checkpoint
    without the encoder, the release file alone. Either must have as many codes as the vocabulary has image tokens."""

    def load(reader: ShardedReader, vq_config: dict, folder: str, codebook: int) -> None:
        state = {k: reader.get(k) for k in reader.keys() if k.startswith(HF_PREFIX)}
        if not state:  # a checkpoint without the encoder: the release file is the whole tokenizer
            if vqgan_ckpt is None:
                raise ConfigError(
                    f"{reader.folder}: the vocabulary has image tokens but the checkpoint holds no image tokenizer "
                    f"(no model.vqmodel.*); pass --vqgan with Chameleon's tokenizer/vqgan.ckpt"
                )
            model = load_original(vqgan_ckpt)
        else:
            model = from_hf_state(state, vq_config, source=reader.folder)
        if model.config.num_embeddings != codebook:
            raise ConfigError(
                f"{vqgan_ckpt or reader.folder}: the VQGAN has {model.config.num_embeddings} codes but the vocabulary "
                f"names {codebook} image tokens"
            )
        if vqgan_ckpt is not None and state:
            full = load_original(vqgan_ckpt)
            theirs = full.state_dict()
            for k, v in model.state_dict().items():
                if k not in theirs or theirs[k].shape != v.shape or not torch.equal(theirs[k].to(v.dtype), v):
                    raise ConfigError(
                        f"{vqgan_ckpt}: its {k} differs from the checkpoint's model.vqmodel.{k}: not the image "
                        f"tokenizer these weights were trained with"
                    )
            model = full
        ChameleonImageTokenizer(model).save(folder)

    return load


def read_vocab_map(model_dir: str) -> torch.Tensor:
    """[unified size] int64: the Chameleon id of every unified id of a converted folder (-1 where none)."""
    d = read_json(os.path.join(model_dir, CONVERT_FILE), "conversion record")
    ids = d.get("unified_to_hf")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ConfigError(f"{os.path.join(model_dir, CONVERT_FILE)}: unified_to_hf must be a list of ids")
    return torch.tensor(ids, dtype=torch.int64)


def iter_hf_names(vocab: UnifiedVocab, token_name: Callable[[int], str]) -> Iterator[tuple[int, str]]:
    """(unified id, name) of every id, as a transformers Chameleon vocabulary map names it."""
    chameleon = {1: "<s>", 2: "</s>", 3: BOI_NAME, 4: EOI_NAME}
    for i in range(vocab.num_special):
        yield i, chameleon.get(i) or f"<cl:{vocab.special_name(i).strip('<>')}>"
    lo, hi = vocab.text_range()
    for i in range(lo, hi):
        yield i, token_name(i - lo)
    lo, hi = vocab.image_range()
    for i in range(lo, hi):
        yield i, image_name_of(i - lo)
    for level in range(vocab.audio_levels):
        lo, hi = vocab.audio_level_range(level)
        for i in range(lo, hi):
            yield i, f"<audio:{level}:{i - lo}>"


def _rows_of(lo: int, hi: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def make(ts: list[torch.Tensor]) -> torch.Tensor:
        return ts[0][lo:hi]

    return make


def _per_head(heads: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def make(ts: list[torch.Tensor]) -> torch.Tensor:
        return ts[0].reshape(heads, -1)

    return make


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor this project's Transformer of ``cfg`` saves (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}


def pieces_to_hf(cfg: ModelConfig) -> list[Piece]:
    """How each tensor of the transformers checkpoint is made from this project's Transformer."""
    d, hd, f = cfg.dim, cfg.head_dim, cfg.ffn_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    out = [Piece("model.embed_tokens.weight", ("tok_embeddings.weight",), _same, (cfg.vocab_size, d))]
    for i in range(cfg.n_layers):
        a, m, us = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"layers.{i}."
        qkv, w13 = (us + "attention.wqkv.weight",), (us + "feed_forward.w13.weight",)
        out += [
            Piece(a + "q_proj.weight", qkv, _rows_of(0, q), (q, d)),
            Piece(a + "k_proj.weight", qkv, _rows_of(q, q + kv), (kv, d)),
            Piece(a + "v_proj.weight", qkv, _rows_of(q + kv, q + 2 * kv), (kv, d)),
            Piece(a + "o_proj.weight", (us + "attention.wo.weight",), _same, (d, q)),
            Piece(a + "q_norm.weight", (us + "attention.q_norm.weight",), _per_head(cfg.n_heads), (cfg.n_heads, hd)),
            Piece(a + "q_norm.bias", (us + "attention.q_norm.bias",), _per_head(cfg.n_heads), (cfg.n_heads, hd)),
            Piece(a + "k_norm.weight", (us + "attention.k_norm.weight",), _per_head(cfg.n_kv_heads),
                  (cfg.n_kv_heads, hd)),
            Piece(a + "k_norm.bias", (us + "attention.k_norm.bias",), _per_head(cfg.n_kv_heads), (cfg.n_kv_heads, hd)),
            Piece(m + "gate_proj.weight", w13, _rows_of(0, f), (f, d)),
            Piece(m + "up_proj.weight", w13, _rows_of(f, 2 * f), (f, d)),
            Piece(m + "down_proj.weight", (us + "feed_forward.w2.weight",), _same, (d, f)),
            Piece(f"model.layers.{i}.input_layernorm.weight", (us + "attention_norm.weight",), _same, (d,)),
            Piece(f"model.layers.{i}.post_attention_layernorm.weight", (us + "ffn_norm.weight",), _same, (d,)),
        ]  # fmt: skip
    out.append(Piece("model.norm.weight", ("norm.weight",), _same, (d,)))
    if not cfg.tie_embeddings:
        out.append(Piece("lm_head.weight", ("output.weight",), _same, (cfg.vocab_size, d)))
    return out


def hf_names(vocab: UnifiedVocab, text_json: dict[str, Any]) -> dict[int, str]:
    """Unified id -> the name a transformers vocabulary map gives it: the BPE token for a text id, Chameleon's own
    names for bos, eos and the image markers and codes, ``<cl:…>`` names for the rest (none taken twice)."""
    local = {i: n for n, i in text_json["model"]["vocab"].items()}
    lo, hi = vocab.text_range()
    if sorted(local) != list(range(hi - lo)):
        raise ConfigError("the text tokenizer's ids are not 0..T-1 for the vocabulary's T text ids")
    taken = set(local.values())
    names: dict[int, str] = {}
    for i, name in iter_hf_names(vocab, lambda j: local[j]):
        if not vocab.text_offset <= i < vocab.image_offset and name in taken:
            name = f"<cl:{i}>"  # a BPE token already spells it
        names[i] = name
        taken.add(name)
    return names


def hf_tokenizer_json(text_json: dict[str, Any], vocab: UnifiedVocab, names: dict[int, str]) -> bytes:
    """Our byte-level BPE renumbered into the unified ids, every other id an added special token."""
    lo, hi = vocab.text_range()
    model = dict(text_json["model"], vocab={n: i + lo for n, i in text_json["model"]["vocab"].items()})
    added = [
        {"id": i, "content": names[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for i in sorted(names) if not lo <= i < hi
    ]  # fmt: skip
    return json.dumps(dict(text_json, model=model, added_tokens=added), ensure_ascii=False).encode()


def hf_config(
    cfg: ModelConfig, vocab: UnifiedVocab, names: dict[int, str], dtype: torch.dtype, vq: dict | None = None
) -> dict[str, Any]:
    """The transformers ChameleonConfig of ``cfg``. ``vq``: the config of a Chameleon VQGAN image tokenizer, whose
    encoder goes into transformers' VQ model; None (this project's own image tokenizer, which transformers' VQ model
    cannot hold) writes a small placeholder: the codes are still named in the vocabulary map."""
    return {
        "architectures": ["ChameleonForConditionalGeneration"],
        "model_type": "chameleon",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "swin_norm": cfg.norm_placement == "post",
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "model_parallel_size": 1,
        "pad_token_id": vocab.pad,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "dtype": str(dtype).removeprefix("torch."),
        "vocabulary_map": {n: i for i, n in sorted(names.items())},
        "vq_config": vq or {
            "embed_dim": 8, "num_embeddings": max(vocab.image_codebook, 1), "latent_channels": 32, "resolution": 16,
            "base_channels": 32, "channel_multiplier": [1], "num_res_blocks": 1, "attn_resolutions": [],
        },
    }  # fmt: skip


def _chameleon_vq(model_dir: str) -> dict | None:
    """The transformers vq_config of a folder whose image tokenizer is Chameleon's VQGAN, else None."""
    path = os.path.join(model_dir, IMAGE_CONFIG)
    if not os.path.exists(path):
        return None
    d = read_json(path, "image tokenizer config")
    if d.get("backend") != BACKEND:
        return None
    return ChameleonVQConfig.from_dict(
        {k: v for k, v in d.items() if k not in ("backend", "codebook_size", "decoder")}
    ).to_dict()


def convert_to_hf(model_dir: str, out: str, dtype: str = "source") -> dict[str, Any]:
    """Convert this project's exported model folder ``model_dir`` into a transformers Chameleon folder ``out``."""
    model_dir = os.path.abspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{model_dir}: model folder not found")
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    cfg = ModelConfig.load(os.path.join(model_dir, CONFIG_FILE))
    vocab = UnifiedVocab.load(os.path.join(model_dir, VOCAB_FILE))
    if vocab.hash != cfg.vocab_hash:
        raise ConfigError(f"{model_dir}: vocab.json is not the vocabulary the model was trained on")
    check_vocab_matches(model_dir, vocab)
    if cfg.untied_parts:
        raise ConfigError(f"{model_dir}: a modality-untied model (untied={cfg.untied!r}) has no transformers form")
    if not cfg.qk_norm or cfg.qk_norm_type != "head_layernorm" or cfg.qk_norm_eps != 1e-5:
        raise ConfigError(
            f"{model_dir}: transformers' Chameleon normalises q and k with a per-head LayerNorm (eps 1e-5); this "
            f"model has qk_norm={cfg.qk_norm}, qk_norm_type={cfg.qk_norm_type!r}, which it cannot represent "
            f"(train with qk_norm_type=head_layernorm to export to transformers)"
        )
    text_path = os.path.join(model_dir, TEXT_FILE)
    text_json = read_json(text_path, "text tokenizer")
    names = hf_names(vocab, text_json)
    out = os.path.abspath(out)
    check_output_dir(out, HF_EXPORT)
    with ShardedReader(model_dir, single=WEIGHTS, index="model.safetensors.index.json") as reader:
        pieces = pieces_to_hf(cfg)
        _check_keys(reader, model_shapes(cfg), lambda k: False)
        src_dtype = reader.reader(pieces[0].sources[0]).dtype(pieces[0].sources[0])
        with building_dir(out, HF_EXPORT) as tmp:
            vq = _chameleon_vq(model_dir)
            if vq is None:
                stream_pieces(reader, pieces, os.path.join(tmp, WEIGHTS), DTYPE_CHOICES[dtype], {"format": "pt"})
            else:  # two shards: the transformer, and the VQGAN's encoder side under model.vqmodel.
                shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
                stream_pieces(reader, pieces, os.path.join(tmp, shards[0]), DTYPE_CHOICES[dtype], {"format": "pt"})
                with ShardedReader(model_dir, single=IMAGE_WEIGHTS, index=None) as vq_reader:
                    vq_pieces = [
                        Piece(HF_PREFIX + k, (k,), _same, vq_reader.reader(k).shape(k))
                        for k in vq_reader.keys() if makes_codes(k)
                    ]  # fmt: skip
                    stream_pieces(vq_reader, vq_pieces, os.path.join(tmp, shards[1]), None, {"format": "pt"})
                weight_map = {p.name: shards[0] for p in pieces} | {p.name: shards[1] for p in vq_pieces}
                total = sum(os.path.getsize(os.path.join(tmp, f)) for f in shards)  # transformers reads it
                write_json_atomic(
                    os.path.join(tmp, "model.safetensors.index.json"),
                    {"metadata": {"total_size": total}, "weight_map": weight_map},
                )
            write_json_atomic(
                os.path.join(tmp, "config.json"), hf_config(cfg, vocab, names, DTYPE_CHOICES[dtype] or src_dtype, vq)
            )
            with open(os.path.join(tmp, TEXT_FILE), "wb") as fh:
                fh.write(hf_tokenizer_json(text_json, vocab, names))
            write_json_atomic(
                os.path.join(tmp, "generation_config.json"),
                {"bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad},
            )
            summary = {"written_by": "chameleon-lite convert to-hf", "source_folder": os.path.basename(model_dir),
                       "vocab_hash": vocab.hash, "tensors": len(pieces)}  # fmt: skip
            write_json_atomic(os.path.join(tmp, HF_MARK), summary)
    return summary
