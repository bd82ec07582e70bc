"""The transformers Chameleon format in and out, against transformers itself on tiny random checkpoints built here:
logits parity (fp32 and bf16) on a mixed text + image-token prompt in three configurations, greedy decoding token for
token, the round trip in -> out -> transformers, and every refusal."""

from __future__ import annotations

import copy
import json
import os
import struct

import pytest
import torch

from chameleon_lite.cli import main
from chameleon_lite.convert.hf_chameleon import (
    convert_from_hf,
    convert_to_hf,
    invert_map,
    model_config_from_hf,
    pieces_from_hf,
    read_vocab_map,
    vocab_map_from_hf,
)
from chameleon_lite.errors import ConfigError, UserError
from chameleon_lite.model.config import PRESETS, ModelConfig
from chameleon_lite.model.io import empty_model, load_weights

transformers = pytest.importorskip("transformers")
from hf_fixture import K_IMAGE, build_hf_folder  # noqa: E402

CONFIGS = {
    "prenorm-mha": dict(swin_norm=False, n_kv_heads=4),
    "swin-mha": dict(swin_norm=True, n_kv_heads=4, seed=1),
    "prenorm-gqa-tied": dict(swin_norm=False, n_kv_heads=2, tie=True, seed=2),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers model, our model, unified->hf ids, hf->unified ids, vocabulary map, folders)."""
    d = tmp_path_factory.mktemp(request.param)
    vmap = build_hf_folder(str(d / "hf"), **CONFIGS[request.param])
    convert_from_hf(str(d / "hf"), str(d / "ours"))
    hf = transformers.ChameleonForConditionalGeneration.from_pretrained(str(d / "hf")).eval()
    ours = _load_ours(str(d / "ours"))
    u2h = read_vocab_map(str(d / "ours"))
    h2u = invert_map(u2h, hf.config.vocab_size)
    return hf, ours, u2h, h2u, vmap, d


def _load_ours(folder: str):
    from safetensors.torch import load_file

    cfg = ModelConfig.load(os.path.join(folder, "config.json"))
    model = empty_model(cfg, "cpu")
    load_weights(model, load_file(os.path.join(folder, "model.safetensors")), folder)
    return model.eval()


def _prompt(vmap: dict) -> torch.Tensor:
    """bos, text, a picture's worth of image tokens between Chameleon's markers, more text."""
    text = [vmap[t] for t in ("Ġlarge", "Ġred", "Ġcircle") if t in vmap] + list(range(90, 110))
    image = [4 + j for j in range(0, K_IMAGE, 3)]
    return torch.tensor([[1, *text[:8], vmap["<racm3:break>"], *image, vmap["<eoss>"], *text[8:]]])


def _our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    B, L = ids.shape
    z = torch.zeros(B, L, dtype=torch.int32)
    return model(ids, torch.arange(L).expand(B, L), z, z)


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    """Raw logits (transformers' forward masks the image tokens' logits; the parity is on every row)."""
    return hf.lm_head(hf.model(input_ids=ids).last_hidden_state)


def test_fp32_logits_match(pair):
    hf, ours, u2h, h2u, vmap, _ = pair
    ids = _prompt(vmap)
    with torch.no_grad():
        ref, got = _hf_logits(hf, ids), _our_logits(ours, h2u[ids])
    has = u2h >= 0
    diff = (got[0][:, has] - ref[0][:, u2h[has]]).abs().max().item()
    assert diff <= 1e-4, diff
    assert bool((got[0][:, ~has] == 0).all())  # ids Chameleon has no row for: zero rows, never its logits


def test_bf16_logits_within_bf16_error(pair):
    """Both engines in bf16 against the fp32 reference: ours no further off than transformers' own bf16 run."""
    hf, ours, u2h, h2u, vmap, _ = pair
    ids = _prompt(vmap)
    has = u2h >= 0
    with torch.no_grad():
        ref = _hf_logits(hf, ids)[0][:, u2h[has]]
        hf16 = _hf_logits(copy.deepcopy(hf).to(torch.bfloat16), ids).float()[0][:, u2h[has]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours16 = _our_logits(ours, h2u[ids]).float()[0][:, has]
    e_hf, e_ours = (hf16 - ref).abs().max().item(), (ours16 - ref).abs().max().item()
    assert e_ours <= max(2 * e_hf, 2e-2), (e_ours, e_hf)


def test_greedy_64_tokens_match_transformers_generate(pair):
    """transformers' generate (greedy, image tokens masked as its forward does) against our KV-cache decode."""
    hf, ours, u2h, h2u, vmap, _ = pair
    ids = _prompt(vmap)
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=64, do_sample=False, min_new_tokens=64, eos_token_id=None)[
            0, ids.shape[1] :
        ]
        allowed = (u2h >= 0) & ~torch.isin(u2h, torch.tensor(sorted(hf.model.vocabulary_mapping.image_tokens)))
        ours.setup_cache(1, ids.shape[1] + 64)
        logits = ours.prefill(h2u[ids])
        got = []
        for _ in range(64):
            nxt = logits.reshape(-1).masked_fill(~allowed, float("-inf")).argmax()
            got.append(int(u2h[nxt]))
            logits = ours.decode_step(nxt.view(1, 1))
    assert got == want.tolist()


def test_round_trip_back_into_transformers(pair):
    """in -> out -> transformers: the same logits, indexed by the unified ids the exported folder uses."""
    hf, _, u2h, h2u, vmap, d = pair
    convert_to_hf(str(d / "ours"), str(d / "back"))
    back = transformers.ChameleonForConditionalGeneration.from_pretrained(str(d / "back")).eval()
    ids = _prompt(vmap)
    has = u2h >= 0
    with torch.no_grad():
        ref, got = _hf_logits(hf, ids)[0], _hf_logits(back, h2u[ids])[0]
    assert (got[:, has] - ref[:, u2h[has]]).abs().max().item() <= 1e-5
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():  # the VQGAN's encoder went along: the same picture gives the same codes, as named ids
        assert torch.equal(u2h[back.model.get_image_tokens(pixels)], hf.model.get_image_tokens(pixels))
    names = back.config.vocabulary_map
    assert names["<racm3:break>"] == 3 and names["<eoss>"] == 4 and names["<s>"] == 1
    assert len(back.model.vocabulary_mapping.image_tokens) == K_IMAGE


def test_seven_b_config_maps_to_the_7b_preset_without_allocating():
    """Chameleon-7B's transformers config -> the 7b preset's shapes; the conversion plan on the meta device."""
    vmap = {"<s>": 0, "</s>": 1, "<racm3:break>": 8197, "<eoss>": 8196}
    vmap |= {f"IMGIMG{''.join(chr(65 + int(c)) for c in str(k))}Z": 4 + k for k in range(8192)}
    hf = dict(transformers.ChameleonConfig(vocabulary_map=vmap, bos_token_id=0, eos_token_id=1).to_dict())
    vm = vocab_map_from_hf(hf, "7b")
    cfg = model_config_from_hf(hf, vm.vocab, "7b")
    p = PRESETS["7b"]
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size) == (
        p["dim"], p["n_layers"], p["n_heads"], p["n_kv_heads"], p["ffn_dim"], 65536 - 4 + 16
    )  # fmt: skip
    assert vm.vocab.image_codebook == 8192 and cfg.head_dim == 128
    pieces = pieces_from_hf(cfg, vm)
    assert len(pieces) == 2 + 10 * 32 + 1
    with torch.device("meta"):
        from chameleon_lite.model.transformer import Transformer

        shapes = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    assert {p.name: p.shape for p in pieces} == shapes


# ---- refusals -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_src")
    build_hf_folder(str(d / "hf"), layers=1)
    return d / "hf"


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


def _edit_config(folder, edit):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        d = json.load(f)
    edit(d)
    with open(path, "w") as f:
        json.dump(d, f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("model.layers.0.mlp.up_proj.weight"), "1 missing (first 'model.layers.0.mlp.up_proj.weight')"),
        (lambda s: s.__setitem__("model.extra.weight", torch.zeros(2)), "1 unexpected (first 'model.extra.weight')"),
        (lambda s: s.__setitem__("model.norm.weight", torch.zeros(3)), "of the wrong shape (first 'model.norm.weight'"),
    ],
)
def test_weights_that_do_not_fit_are_refused_before_writing(hf_dir, tmp_path, edit, message):
    src = _copy(hf_dir, tmp_path / "hf")
    _rewrite_weights(src, edit)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        convert_from_hf(str(src), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out") and not any(p.name.startswith("out.tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.__setitem__("model_type", "llama"), "model_type is 'llama'"),
        (lambda d: d.pop("vocabulary_map"), "no vocabulary_map"),
        (lambda d: d["vocabulary_map"].pop("IMGIMGDZ"), "do not name the codes 0..62 once each"),
        (lambda d: d.__setitem__("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
         "RoPE type 'linear' is not supported"),
        (lambda d: d.__setitem__("mlp_bias", True), "mlp_bias = True is not supported"),
        (lambda d: d["vocabulary_map"].__setitem__("<eoss>", 10**9), "outside"),
    ],
)  # fmt: skip
def test_configs_this_engine_does_not_run_are_refused(hf_dir, tmp_path, edit, message):
    src = _copy(hf_dir, tmp_path / "hf")
    _edit_config(src, edit)
    with pytest.raises(ConfigError, match=message):
        convert_from_hf(str(src), str(tmp_path / "out"))


def test_damaged_files_give_one_line(hf_dir, tmp_path, capsys):
    src = _copy(hf_dir, tmp_path / "hf")
    path = os.path.join(src, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    assert main(["convert", "from-hf", str(src), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not fit its byte range" in err
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 10**12))
    assert main(["convert", "from-hf", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "not a safetensors file" in capsys.readouterr().err
    assert main(["convert", "from-hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    assert "folder not found" in capsys.readouterr().err


def test_output_folders_not_ours_are_never_replaced(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not an exported model folder"):
        convert_from_hf(str(hf_dir), str(out))
    assert (out / "notes.txt").read_text() == "mine"


def test_to_hf_refuses_an_rms_qk_norm_model(tmp_path):
    from chameleon_lite.bundle import demo_model_dir

    with pytest.raises(ConfigError, match="per-head LayerNorm"):
        convert_to_hf(demo_model_dir(), str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")


def test_a_model_of_this_project_with_audio_loads_in_transformers(tmp_path):
    """Our own layout (BPE, our image VQ, audio codes) with Chameleon's q/k norm: to-hf, then transformers gives the
    same logits on text + picture + clip ids; audio codes are plain extra entries, image codes named IMGIMG."""
    import shutil

    from chameleon_lite.bundle import demo_model_dir, write_safetensors_atomic
    from chameleon_lite.model.transformer import build_model

    src = tmp_path / "ours"
    shutil.copytree(demo_model_dir(), src)
    cfg = ModelConfig.load(str(src / "config.json"))
    cfg.qk_norm_type = "head_layernorm"
    ours = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    cfg.save(str(src / "config.json"))
    write_safetensors_atomic(str(src / "model.safetensors"), {k: v.contiguous() for k, v in ours.state_dict().items()})
    convert_to_hf(str(src), str(tmp_path / "hf"))
    hf = transformers.ChameleonForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    from chameleon_lite.vocab import UnifiedVocab

    v = UnifiedVocab.load(str(src / "vocab.json"))
    ids = torch.tensor([[v.bos, v.text_offset + 5, v.text_offset + 40, v.boi, *range(v.image_offset, v.image_offset + 6),
                         v.eoi, v.boa, *range(v.audio_offset, v.audio_offset + 4), v.eoa, v.text_offset + 7]])  # fmt: skip
    with torch.no_grad():
        diff = (_hf_logits(hf, ids) - _our_logits(ours, ids)).abs().max().item()
    assert diff <= 1e-4, diff
    names = hf.config.vocabulary_map
    assert names["<audio:1:3>"] == v.audio_level_range(1)[0] + 3
    assert len(hf.model.vocabulary_mapping.image_tokens) == v.image_codebook


def test_files_that_do_not_read_give_one_line(tmp_path):
    """The shard reader, the index, the Chameleon tokenizer and the converted image tokenizer's config."""
    from chameleon_lite.convert.hf_chameleon import text_tokenizer_from_hf
    from chameleon_lite.convert.stream import SafetensorsReader, ShardedReader

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(ConfigError, match="header is not JSON"):
        SafetensorsReader(str(bad))
    idx = tmp_path / "model.safetensors.index.json"
    for weight_map, message in (({"a": "../x.safetensors"}, "is not a file name inside"), ({"a": 3}, "weight_map")):
        idx.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ConfigError, match=message):
            ShardedReader(str(tmp_path))
    from safetensors.torch import save_file

    save_file({"b": torch.zeros(2)}, str(tmp_path / "s.safetensors"))
    idx.write_text(json.dumps({"weight_map": {"b": "s.safetensors", "c": "s.safetensors"}}))
    with pytest.raises(ConfigError, match="lists 'c', which no shard holds"):
        ShardedReader(str(tmp_path))
    vm = vocab_map_from_hf({"vocab_size": 8, "vocabulary_map": {"<s>": 0, "</s>": 1}, "bos_token_id": 0,
                            "eos_token_id": 1}, "cfg")  # fmt: skip
    with pytest.raises(ConfigError, match="this project reads a BPE"):
        text_tokenizer_from_hf(json.dumps({"model": {"type": "Unigram", "vocab": {}}}).encode(), vm, "tok.json")
    with pytest.raises(ConfigError, match="not a byte-level BPE"):
        text_tokenizer_from_hf(json.dumps({"model": {"type": "BPE", "vocab": {}}, "decoder": None}).encode(), vm, "t")
    with pytest.raises(ConfigError, match="not a transformers tokenizer.json"):
        text_tokenizer_from_hf(b"\xff", vm, "t")


def test_a_converted_image_tokenizer_config_that_does_not_fit_is_refused(hf_dir, tmp_path):
    from chameleon_lite.convert.hf_chameleon import vq_loader
    from chameleon_lite.convert.stream import ShardedReader
    from chameleon_lite.tokenizers.loader import load_image_tokenizer

    out = tmp_path / "m"
    convert_from_hf(str(hf_dir), str(out))
    cfg = json.loads((out / "image_vq.json").read_text())
    (out / "image_vq.json").write_text(json.dumps({**cfg, "codebook_size": 7}))
    with pytest.raises(ConfigError, match="codebook_size 7 is not the VQGAN's num_embeddings 64"):
        load_image_tokenizer(str(out))
    hf = json.loads((hf_dir / "config.json").read_text())
    with ShardedReader(str(hf_dir)) as reader, pytest.raises(ConfigError, match="has 64 codes but the vocabulary"):
        vq_loader()(reader, hf["vq_config"], str(tmp_path / "vq"), 128)
