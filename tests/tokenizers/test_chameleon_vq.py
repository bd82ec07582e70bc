import json
import os

import pytest
import torch
import torch.nn.functional as F

from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.tokenizers.chameleon_vq import (
    ChameleonVQConfig,
    ChameleonVQGAN,
    from_hf_state,
    load_original,
)

# two levels (32 -> 16), attention at 16: in the encoder's down.1 and the decoder's up.1
TINY = dict(
    embed_dim=16,
    num_embeddings=64,
    latent_channels=32,
    resolution=32,
    base_channels=32,
    channel_multiplier=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[16],
)
# the same network under the original yaml's names
TINY_DDCONFIG = dict(
    double_z=False,
    z_channels=32,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[16],
    dropout=0.0,
)
CHECKPOINT_RAN = []


class _Marker:
    """A custom class in a checkpoint: loading must refuse it without ever building one."""

    def __setstate__(self, state):
        CHECKPOINT_RAN.append(state)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial norms (weights far from 1, biases far from 0) and a codebook on the scale of the latents."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name or "norm_out" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.4 * torch.randn(p.shape, generator=g))
        z = model.quant_conv(model.encoder(_pixels(4, seed=seed + 1)))
        book = model.quantize.embedding.weight
        book.copy_(torch.randn(book.shape, generator=g) * z.std() + z.mean())


def _pixels(n: int, size: int = 32, seed: int = 0, width: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, width or size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def hf():
    """A tiny transformers ChameleonVQVAE with seeded random weights, and its vq_config as config.json has it."""
    pytest.importorskip("transformers")
    from transformers import ChameleonVQVAEConfig  # lazy: optional, heavy
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE  # lazy: as above

    torch.manual_seed(0)
    config = ChameleonVQVAEConfig(**TINY)
    model = ChameleonVQVAE(config).eval()
    _perturb(model, seed=1)
    return model, config.to_dict()


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A release-format folder: vqgan.ckpt (Lightning checkpoint with loss weights) + vqgan.yaml, and the model."""
    torch.manual_seed(2)
    model = ChameleonVQGAN(ChameleonVQConfig(**TINY)).eval()
    _perturb(model, seed=3)
    folder = tmp_path_factory.mktemp("chameleon_tokenizer")
    state = {
        **model.state_dict(),
        "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4),
        "loss.logvar": torch.zeros(()),
    }
    torch.save(
        {
            "epoch": 3,
            "global_step": 1000,
            "pytorch-lightning_version": "1.8.6",
            "state_dict": state,
            "optimizer_states": [],
        },
        folder / "vqgan.ckpt",
    )
    yaml_doc = {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "taming.models.vqgan.VQModel",
            "params": {
                "embed_dim": 16,
                "n_embed": 64,
                "ddconfig": TINY_DDCONFIG,
                "lossconfig": {
                    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                    "params": {"disc_start": 0},
                },
            },
        }
    }
    (folder / "vqgan.yaml").write_text(_to_yaml(yaml_doc))
    return model, folder


def _to_yaml(doc: dict) -> str:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_dump(doc)


def _save_state(path, state: dict) -> str:
    torch.save({"state_dict": state}, path)
    return str(path)


def _reference_decode(sd: dict, codes: torch.Tensor) -> torch.Tensor:
    """A straightforward functional decoder that follows the checkpoint's key names, independent of the module."""

    def norm(x, p):
        return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)

    def conv(x, p):
        w = sd[f"{p}.weight"]
        return F.conv2d(x, w, sd[f"{p}.bias"], padding=w.shape[-1] // 2)

    def swish(x):
        return x * torch.sigmoid(x)

    def res(x, p):
        h = conv(swish(norm(x, f"{p}.norm1")), f"{p}.conv1")
        h = conv(swish(norm(h, f"{p}.norm2")), f"{p}.conv2")
        return (conv(x, f"{p}.nin_shortcut") if f"{p}.nin_shortcut.weight" in sd else x) + h

    def attn(x, p):
        b, c, hh, ww = x.shape
        n = norm(x, f"{p}.norm")
        q, k, v = (conv(n, f"{p}.{m}").flatten(2) for m in "qkv")
        a = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c**0.5, dim=-1)
        return x + conv(torch.einsum("bij,bcj->bci", a, v).reshape(b, c, hh, ww), f"{p}.proj_out")

    x = sd["quantize.embedding.weight"][codes].permute(0, 3, 1, 2)
    x = conv(conv(x, "post_quant_conv"), "decoder.conv_in")
    x = res(attn(res(x, "decoder.mid.block_1"), "decoder.mid.attn_1"), "decoder.mid.block_2")
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up."))
    for i in reversed(range(levels)):
        j = 0
        while f"decoder.up.{i}.block.{j}.conv1.weight" in sd:
            x = res(x, f"decoder.up.{i}.block.{j}")
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                x = attn(x, f"decoder.up.{i}.attn.{j}")
            j += 1
        if f"decoder.up.{i}.upsample.conv.weight" in sd:
            x = conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), f"decoder.up.{i}.upsample.conv")
    return conv(swish(norm(x, "decoder.norm_out")), "decoder.conv_out")


# ---------------------------------------------------------------------------------------------- transformers
def test_codes_identical_to_transformers(hf):
    model, vq_config = hf
    state = {f"model.vqmodel.{k}": v for k, v in model.state_dict().items()}
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(2, 2)  # the language model's weights are ignored
    ours = from_hf_state(state, vq_config)
    assert ours.decoder is None and ours.grid == (16, 16)
    for seed in range(3):
        pixels = _pixels(3, seed=10 + seed)
        expected = model.encode(pixels).image_tokens.reshape(3, 16, 16)
        codes = ours.encode(pixels)
        assert codes.dtype == torch.int64 and codes.shape == (3, 16, 16)
        assert torch.equal(codes, expected)
    assert len(codes.unique()) > 16  # the codebook is really searched, not one code everywhere
    with pytest.raises(ConfigError, match="transformers checkpoint: this checkpoint has no VQGAN decoder"):
        ours.decode(codes)


def test_release_layout_matches_transformers_encoder_side():
    pytest.importorskip("transformers")
    from transformers import ChameleonVQVAEConfig  # lazy: optional, heavy
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE  # lazy: as above

    with torch.device("meta"):
        ours = ChameleonVQGAN(ChameleonVQConfig()).state_dict()
        theirs = ChameleonVQVAE(ChameleonVQVAEConfig()).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("decoder.")} == {
        k: tuple(v.shape) for k, v in theirs.items()
    }
    # the release decoder: 5 levels of 3 residual blocks, upsampling on all but level 0, attention only mid-way
    assert ours["decoder.conv_in.weight"].shape == (512, 256, 3, 3)
    assert ours["decoder.up.4.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert ours["decoder.up.1.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert ours["decoder.up.0.block.2.conv2.weight"].shape == (128, 128, 3, 3)
    assert ours["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    assert "decoder.up.1.upsample.conv.weight" in ours and "decoder.up.0.upsample.conv.weight" not in ours
    assert "decoder.up.0.block.3.conv1.weight" not in ours
    assert [k for k in ours if ".attn" in k and "mid.attn_1" not in k] == []


def test_hf_config_forms(hf):
    _, vq_config = hf
    cfg = ChameleonVQConfig.from_dict(vq_config)
    assert cfg == ChameleonVQConfig(**TINY)
    # the converted hub config carries the original names next to the new ones
    both = {**vq_config, "ch": 32, "ch_mult": [1, 2], "z_channels": 32, "n_embed": 64, "out_ch": 3, "double_z": False}
    assert ChameleonVQConfig.from_dict(both) == cfg
    with pytest.raises(ConfigError, match="ch = 64 disagrees with base_channels = 32"):
        ChameleonVQConfig.from_dict({**vq_config, "ch": 64})
    with pytest.raises(ConfigError, match="model_type"):
        ChameleonVQConfig.from_dict({**vq_config, "model_type": "llama"})
    with pytest.raises(ConfigError, match="attn_type"):
        ChameleonVQConfig.from_dict({**vq_config, "attn_type": "linear"})


def test_hf_state_errors(hf):
    model, vq_config = hf
    state = {f"model.vqmodel.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="no key starts with 'model.vqmodel.'"):
        from_hf_state(model.state_dict(), vq_config)
    assert from_hf_state(model.state_dict(), vq_config, prefix="").decoder is None
    del state["model.vqmodel.encoder.down.1.attn.0.q.bias"]
    with pytest.raises(ConfigError, match=r"^hub/x: weights do not fit .*missing \['encoder.down.1.attn.0.q.bias'\]"):
        from_hf_state(state, vq_config, source="hub/x")
    with pytest.raises(ConfigError, match="^hub/x: unknown VQGAN config keys"):
        from_hf_state(state, {**vq_config, "bogus": 1}, source="hub/x")


# ---------------------------------------------------------------------------------------------- original files
def test_original_round_trip(original):
    model, folder = original
    loaded = load_original(str(folder / "vqgan.ckpt"))  # vqgan.yaml beside it
    assert loaded.config == model.config and not loaded.training
    pixels = _pixels(4, seed=20)
    codes = loaded.encode(pixels)
    assert torch.equal(codes, model.encode(pixels))
    out = loaded.decode(codes)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(loaded.encode(out), loaded.encode(loaded.decode(codes)))  # deterministic both ways
    # a flat JSON config (transformers' names) works as well
    (folder / "flat.json").write_text(json.dumps(model.config.to_dict()))
    again = load_original(str(folder / "vqgan.ckpt"), str(folder / "flat.json"))
    assert torch.equal(again.encode(pixels), codes)


def test_decoder_matches_a_functional_reference(original):
    model, _ = original
    codes = torch.randint(0, 64, (2, 16, 16), generator=torch.Generator().manual_seed(5))
    expected = _reference_decode(model.state_dict(), codes)
    torch.testing.assert_close(model.decode(codes), expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 0.1  # not a degenerate all-zero picture


def test_shapes_and_upsampling(original):
    model, _ = original
    assert model.grid == (16, 16) and model.config.factor == 2
    wide = _pixels(2, 32, seed=7, width=64)
    assert model.encode(wide).shape == (2, 16, 32)
    assert model.decode(torch.zeros(1, 3, 5, dtype=torch.long)).shape == (1, 3, 6, 10)
    with pytest.raises(DataError, match=r"shape \[B, 3, H, W\]"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(DataError, match="multiples of 2"):
        model.encode(torch.zeros(1, 3, 31, 32))
    with pytest.raises(DataError, match=r"codes must lie in \[0, 64\)"):
        model.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(DataError, match="integer"):
        model.decode(torch.zeros(1, 2, 2))


def test_pickled_class_refused(original, tmp_path):
    model, folder = original
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": model.state_dict(), "callbacks": _Marker()}, path)
    with pytest.raises(ConfigError, match=r"loads without running code \(Unsupported global: .*_Marker") as e:
        load_original(str(path), str(folder / "vqgan.yaml"))
    assert "\n" not in str(e.value) and CHECKPOINT_RAN == []


@pytest.mark.parametrize(
    "change, message",
    [
        ("drop", r"missing \['decoder.up.1.attn.1.proj_out.bias'\]"),
        ("extra", r"unexpected \['decoder.extra.weight'\]"),
        ("shape", r"quantize.embedding.weight has shape \(63, 16\), the config needs \(64, 16\)"),
        ("dtype", r"quant_conv.bias must be a float tensor, got dtype torch.int64"),
    ],
)
def test_weights_that_do_not_fit(original, tmp_path, change, message):
    model, folder = original
    state = dict(model.state_dict())
    if change == "drop":
        del state["decoder.up.1.attn.1.proj_out.bias"]
    elif change == "extra":
        state["decoder.extra.weight"] = torch.zeros(1)
    elif change == "shape":
        state["quantize.embedding.weight"] = state["quantize.embedding.weight"][:63]
    else:
        state["quant_conv.bias"] = torch.zeros(16, dtype=torch.long)
    path = _save_state(tmp_path / "vqgan.ckpt", state)
    with pytest.raises(ConfigError, match=f"^{path}: .*{message}"):
        load_original(path, str(folder / "vqgan.yaml"))


@pytest.mark.parametrize("kind", ["garbage", "empty", "text", "truncated", "missing", "folder", "no_state_dict"])
def test_unreadable_checkpoints(original, tmp_path, kind):
    _, folder = original
    path = tmp_path / "vqgan.ckpt"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        data = (folder / "vqgan.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "folder":
        path.mkdir()
    elif kind == "no_state_dict":
        torch.save({"weights": {}}, path)
    with pytest.raises(ConfigError) as e:
        load_original(str(path), str(folder / "vqgan.yaml"))
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: [unclosed\n", "not valid YAML"),
        ("model:\n  params:\n    embed_dim: 16\n", "model.params.ddconfig"),
        ("- 1\n", "expected a mapping, got list"),
    ],
)
def test_unreadable_configs(original, tmp_path, text, message):
    _, folder = original
    path = tmp_path / "vqgan.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        load_original(str(folder / "vqgan.ckpt"), str(path))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, r"unknown VQGAN config keys \['bogus'\]"),
        ({"tanh_out": True}, "tanh_out True is not supported"),
        ({"ch": 48}, r"base_channels x channel_multiplier gives widths \[48, 96\]"),
    ],
)
def test_configs_that_do_not_fit(original, tmp_path, change, message):
    _, folder = original
    path = tmp_path / "vqgan.yaml"
    path.write_text(
        _to_yaml({"model": {"params": {"embed_dim": 16, "n_embed": 64, "ddconfig": {**TINY_DDCONFIG, **change}}}})
    )
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        load_original(str(folder / "vqgan.ckpt"), str(path))


def test_missing_config(tmp_path, original):
    _, folder = original
    ckpt = tmp_path / "vqgan.ckpt"
    ckpt.write_bytes((folder / "vqgan.ckpt").read_bytes())
    with pytest.raises(ConfigError, match="no vqgan.yaml beside the checkpoint"):
        load_original(str(ckpt))
    with pytest.raises(ConfigError, match="VQGAN config not found"):
        load_original(str(ckpt), str(tmp_path / "nope.yaml"))


def test_config_validation_and_round_trip():
    cfg = ChameleonVQConfig()
    assert (cfg.factor, cfg.resolution // cfg.factor, cfg.num_embeddings, cfg.embed_dim) == (16, 32, 8192, 256)
    assert ChameleonVQConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ChameleonVQConfig(attn_resolutions=None).attn_resolutions == ()
    with pytest.raises(ConfigError, match="double_latent must be false"):
        ChameleonVQConfig(double_latent=True)
    with pytest.raises(ConfigError, match="resolution 520 must be a multiple of the downsampling factor 16"):
        ChameleonVQConfig(resolution=520)
    with pytest.raises(ConfigError, match="num_res_blocks must be a positive integer"):
        ChameleonVQConfig(num_res_blocks=0)
    with pytest.raises(ConfigError, match="channel_multiplier must be a list of integers"):
        ChameleonVQConfig(channel_multiplier=[1, 2.5])
    with pytest.raises(ConfigError, match="dropout"):
        ChameleonVQConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="must be a mapping"):
        ChameleonVQConfig.from_dict([1])
