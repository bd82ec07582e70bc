import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from chameleon_lite.bundle import IMAGE_CONFIG, IMAGE_WEIGHTS
from chameleon_lite.data.image_files import fit_square, load_images
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.tokenizers.image import PRESETS, ImageTokenizer, ImageVQConfig, ImageVQModel, preset
from chameleon_lite.tokenizers.loader import vocab_from_tokenizer_dir
from chameleon_lite.vocab import UnifiedVocab

SMALL = dict(image_size=16, channels=(8, 8, 8), dec_channels=(8, 8, 8), codebook_size=16, codebook_dim=4)


def small_tokenizer(**kw) -> ImageTokenizer:
    torch.manual_seed(0)
    model = ImageVQModel(preset("tiny", **{**SMALL, **kw}))
    model.train()
    with torch.no_grad():  # one training-mode pass runs the k-means initialisation of the codebook
        model(torch.rand(8, 3, 16, 16) * 2 - 1)
    return ImageTokenizer(model, autocast=None)


def rand_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- config
def test_config_round_trip_and_validation():
    cfg = preset("tiny")
    assert ImageVQConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="quantizer"):
        ImageVQConfig(quantizer="rvq")
    with pytest.raises(ConfigError, match="factor"):
        ImageVQConfig(factor=6)
    with pytest.raises(ConfigError, match="multiple"):
        ImageVQConfig(image_size=60)
    with pytest.raises(ConfigError, match="fsq_levels"):
        ImageVQConfig(quantizer="fsq", fsq_levels=(8, 8))
    with pytest.raises(ConfigError, match="unknown"):
        ImageVQConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="norm"):
        ImageVQConfig(norm="batch")
    with pytest.raises(ConfigError, match="padding"):
        ImageVQConfig(padding="replicate")
    with pytest.raises(ConfigError, match="needs norm 'channel'"):
        ImageVQConfig(norm="group", padding="background")
    fsq = preset("tiny", quantizer="fsq")  # the default levels make the default codebook
    assert ImageVQModel(fsq).quantize(torch.randn(1, fsq.codebook_dim, 2, 2))[1].max() < fsq.codebook_size
    # a config written before norm/padding existed means what the network was then: GroupNorm, zero padding
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("norm", "padding")}
    assert (ImageVQConfig.from_dict(old).norm, ImageVQConfig.from_dict(old).padding) == ("group", "zeros")


@pytest.mark.parametrize("norm,padding,local", [("channel", "background", True), ("group", "zeros", False)])
def test_encoder_reads_the_border_as_background(norm, padding, local):
    """With per-position norms and background padding, a plain black picture encodes to the same latent at every
    position (the border reads as more background), and a shape's latent does not move when a second shape is
    drawn in the far corner. GroupNorm (picture-wide statistics) with zero padding has neither property."""
    from chameleon_lite.data import procedural as P
    from chameleon_lite.tokenizers.image import to_model_input

    torch.manual_seed(0)
    cfg = preset("tiny", norm=norm, padding=padding)
    enc = ImageVQModel(cfg).encoder.eval()

    def latent(*shapes):
        with torch.no_grad():
            return enc(to_model_input(P.render_image(P.ImageSpec(shapes), cfg.image_size)[None]))[0]

    empty = latent()
    assert torch.allclose(empty, empty[:, :1, :1].expand_as(empty), atol=1e-5) == local
    one = latent(P.Shape("triangle", "orange", "large", "top left"))
    two = latent(P.Shape("triangle", "orange", "large", "top left"), P.Shape("circle", "blue", "small", "bottom right"))
    moved = (two[:, :2, :2] - one[:, :2, :2]).abs().max() / one[:, :2, :2].abs().max()
    assert (moved < 0.01) == local
    if local:  # a call with other pictures (or one that fails) leaves the next call unchanged: no state is kept
        enc(torch.randn(2, 3, cfg.image_size, cfg.image_size))
        with pytest.raises(RuntimeError):
            enc(torch.randn(2, 5, cfg.image_size, cfg.image_size))
        assert torch.equal(latent(), empty)
        # under bf16 the fill goes on the border only: the map inside keeps its values exactly
        conv = copy.deepcopy(next(m for m in enc.modules() if getattr(m, "pad", 0))).to(torch.bfloat16)
        h = torch.randn(1, conv.in_channels, 6, 6).to(torch.bfloat16)
        fill = torch.full((1, conv.in_channels, 1, 1), 1.7)
        framed = torch.full((1, conv.in_channels, 8, 8), 1.7).to(torch.bfloat16)
        framed[..., 1:-1, 1:-1] = h
        assert torch.equal(conv(h, fill=fill), F.conv2d(framed, conv.weight, conv.bias, conv.stride))


@pytest.mark.parametrize(
    "name,size,grid,k", [("tiny", 48, 6, 512), ("base", 256, 16, 8192), ("chameleon", 512, 32, 8192)]
)
def test_preset_shapes(name, size, grid, k):
    cfg = PRESETS[name]
    assert (cfg.image_size, cfg.grid, cfg.codebook_size) == (size, (grid, grid), k)
    with torch.device("meta"):
        model = ImageVQModel(cfg)
        z = model.encoder(torch.empty(2, 3, size, size))
        y = model.decoder(torch.empty(2, cfg.codebook_dim, grid, grid))
    assert tuple(z.shape) == (2, cfg.codebook_dim, grid, grid)
    assert tuple(y.shape) == (2, 3, size, size)
    assert model.quantizer.codebook.shape[-2:] == (k, cfg.codebook_dim)


def test_tiny_preset_runs():
    tok = ImageTokenizer(ImageVQModel(preset("tiny")), autocast=None)
    assert (tok.tokens_per_image, tok.grid, tok.image_size) == (36, (6, 6), 48)
    codes = tok.encode(rand_images(2, 48))
    assert codes.shape == (2, 6, 6) and codes.dtype == torch.int64
    assert tok.decode(codes).shape == (2, 48, 48, 3)


# ---------------------------------------------------------------------------------------------- coding
@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_encode_decode_shapes(quantizer):
    tok = small_tokenizer(quantizer=quantizer, fsq_levels=(4, 4))
    imgs = rand_images(5)
    codes = tok.encode(imgs)
    assert codes.shape == (5, 2, 2) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    out = tok.decode(codes)
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.uint8
    tok.batch_size = 2  # batching must not change results
    assert torch.equal(tok.encode(imgs), codes)
    assert np.array_equal(tok.decode(codes), out)


def test_decode_matches_forward_path():
    tok = small_tokenizer()
    imgs = rand_images(3)
    x = torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        q, codes, _ = tok.model.quantize(tok.model.encoder(x))
        direct = tok.model.decoder(q)
    assert torch.equal(codes, tok.encode(imgs))
    latent = tok.model.codes_to_latent(codes)
    torch.testing.assert_close(latent, q, atol=1e-5, rtol=1e-5)
    from chameleon_lite.tokenizers.image import from_model_output

    assert np.abs(from_model_output(direct).numpy().astype(int) - tok.decode(codes).astype(int)).max() <= 1


def test_inference_mode_outputs():
    tok = small_tokenizer()
    codes = tok.encode(rand_images(1))
    assert not codes.requires_grad and torch.is_inference(codes)


def test_input_forms(tmp_path):
    tok = small_tokenizer()
    rgb = rand_images(1)[0]
    p = tmp_path / "a.png"
    Image.fromarray(rgb).save(p)
    ref = tok.encode(rgb[None])
    assert torch.equal(tok.encode(str(p)), ref)
    assert torch.equal(tok.encode([p]), ref)
    assert torch.equal(tok.encode(Image.fromarray(rgb)), ref)
    assert torch.equal(tok.encode(torch.from_numpy(rgb[None])), ref)
    assert torch.equal(tok.encode([rgb]), ref)
    gray = rgb[..., 0]
    assert torch.equal(tok.encode(gray), tok.encode(np.repeat(gray[..., None], 3, -1)))
    assert torch.equal(tok.encode(Image.fromarray(gray)), tok.encode(np.repeat(gray[..., None], 3, -1)))
    pal = Image.fromarray(rgb).convert("P")
    assert torch.equal(tok.encode(pal), tok.encode(np.asarray(pal.convert("RGB"))))


def test_rgba_composited_over_black():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 200  # fully transparent colour must vanish
    out = load_images(rgba, 16)
    assert out.max() == 0
    out = load_images(Image.fromarray(rgba, "RGBA"), 16)
    assert out.max() == 0


def test_resize_and_center_crop():
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, 8:56] = 255  # covers the centre square of a 2:1 picture with a margin for the resampling kernel
    out = fit_square(img, 16)
    assert out.shape == (16, 16, 3)
    assert out.min() == 255
    assert fit_square(rand_images(1, 16)[0], 16).shape == (16, 16, 3)
    assert load_images(np.zeros((5, 40, 3), np.uint8), 16).shape == (1, 16, 16, 3)


# ---------------------------------------------------------------------------------------------- bad input
def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, not a picture")
    with pytest.raises(DataError, match="notes.png.*not an image"):
        load_images(str(p), 16)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    p = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(rand_images(1, 64)[0]).save(p, format=fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cut.{fmt.lower()}.*truncated"):
        load_images(str(p), 16)


def test_zero_size(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png.*0 bytes"):
        load_images(str(p), 16)
    with pytest.raises(DataError, match="zero-size"):
        load_images(np.zeros((0, 10, 3), np.uint8), 16)
    with pytest.raises(DataError, match="not found"):
        load_images(str(tmp_path / "missing.png"), 16)


def test_too_many_pixels(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(p)
    with pytest.raises(DataError, match="big.png: 300x200 = 60000 pixels exceeds the limit of 50000"):
        load_images(str(p), 16, max_pixels=50_000)


def test_huge_header_refused_without_decoding(tmp_path):
    # A PNG whose header claims 100000 x 100000 pixels: refused from the header, never decoded.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    p = tmp_path / "bomb.png"
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(DataError, match="bomb.png"):
        load_images(str(p), 16)


def test_bad_arrays():
    with pytest.raises(DataError, match="uint8"):
        load_images(np.zeros((16, 16, 3), np.float32), 16)
    with pytest.raises(DataError, match="shape"):
        load_images(np.zeros((16, 16, 2), np.uint8), 16)
    with pytest.raises(DataError, match="no images"):
        load_images([], 16)
    with pytest.raises(DataError, match="image #1"):
        load_images([np.zeros((4, 4, 3), np.uint8), 3.5], 16)


def test_decode_rejects_bad_codes():
    tok = small_tokenizer()
    with pytest.raises(DataError, match=r"shape \[B, 2, 2\]"):
        tok.decode(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(DataError, match="outside"):
        tok.decode(torch.full((1, 2, 2), 16))
    with pytest.raises(DataError, match="outside"):
        tok.decode(torch.full((1, 2, 2), -1))
    with pytest.raises(DataError, match="integers"):
        tok.decode(torch.zeros(1, 2, 2))
    assert tok.decode(torch.zeros(2, 2, dtype=torch.int32)).shape == (1, 16, 16, 3)
    assert tok.decode(np.zeros((3, 4), np.int64)).shape == (3, 16, 16, 3)


# ---------------------------------------------------------------------------------------------- vocab, files
def test_unified_round_trip():
    tok = small_tokenizer()
    vocab = UnifiedVocab(text_size=100, image_codebook=16, audio_levels=2, audio_codebook=8)
    codes = tok.encode(rand_images(3))
    ids = tok.to_unified(codes, vocab)
    assert ids.shape == (3, 4)
    lo, hi = vocab.image_range()
    assert int(ids.min()) >= lo and int(ids.max()) < hi
    assert torch.equal(tok.from_unified(ids, vocab), codes)
    with pytest.raises(ConfigError, match="image codes"):
        tok.to_unified(codes, UnifiedVocab(text_size=100, image_codebook=32, audio_levels=0, audio_codebook=0))
    with pytest.raises(DataError, match="shape"):
        tok.from_unified(ids[:, :3], vocab)


def test_save_load_round_trip(tmp_path):
    tok = small_tokenizer()
    imgs = rand_images(4)
    tok.save(tmp_path)
    assert json.loads((tmp_path / IMAGE_CONFIG).read_text())["codebook_size"] == 16
    back = ImageTokenizer.load(tmp_path, autocast=None)
    assert torch.equal(back.encode(imgs), tok.encode(imgs))
    codes = tok.encode(imgs)
    assert np.array_equal(back.decode(codes), tok.decode(codes))
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    from chameleon_lite.tokenizers.text import TextTokenizer

    TextTokenizer.train(["some text for a tiny vocabulary"] * 4, vocab_size=300).save(tmp_path)
    assert vocab_from_tokenizer_dir(str(tmp_path)).image_codebook == 16


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ImageTokenizer.load(tmp_path)
    small_tokenizer().save(tmp_path)
    (tmp_path / IMAGE_WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        ImageTokenizer.load(tmp_path)
    cfg = json.loads((tmp_path / IMAGE_CONFIG).read_text())
    small_tokenizer().save(tmp_path)
    cfg["codebook_size"] = 32
    (tmp_path / IMAGE_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="do not fit"):
        ImageTokenizer.load(tmp_path)


# ---------------------------------------------------------------------------------------------- training
def _manifest(tmp_path, n: int = 6) -> str:
    os.makedirs(tmp_path / "img", exist_ok=True)
    lines = []
    for i, img in enumerate(rand_images(n, 20)):
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"segments": [{"text": f"picture {i}"}, {"image": f"img/{i}.png"}]}))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_train_resume_and_outputs(tmp_path):
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig
    from chameleon_lite.train.checkpoint import latest_checkpoint, read_train_state
    from chameleon_lite.train.tokenizer_loop import train_image_vq

    manifest = _manifest(tmp_path)
    out = str(tmp_path / "tok")
    cfg = ImageVQTrainConfig(
        model_overrides=SMALL, steps=2, batch_size=4, grid_every=1, log_every=1, ckpt_every=1, disc_start=1, warmup=1
    )
    s = train_image_vq(manifest, out, cfg, progress=False)
    assert s["images"] == 6 and s["steps"] == 2
    assert os.path.isfile(os.path.join(out, "run", "image", "grid_000002.png"))
    ckpt = latest_checkpoint(os.path.join(out, "run", "image"))
    assert read_train_state(ckpt)["step"] == 2
    train_image_vq(manifest, out, ImageVQTrainConfig(**{**cfg.to_dict(), "steps": 3}), progress=False)
    log = [json.loads(line) for line in open(os.path.join(out, "run", "image", "log.jsonl"))]
    assert [r["step"] for r in log] == [1, 2, 3]  # resumed at step 2, not restarted
    assert "d_loss" in log[-1]
    tok = ImageTokenizer.load(out)
    assert tok.encode(str(tmp_path / "img" / "0.png")).shape == (1, 2, 2)
    with pytest.raises(ConfigError, match="different model config"):
        train_image_vq(
            manifest, out, ImageVQTrainConfig(model_overrides={**SMALL, "codebook_size": 8}, steps=4), progress=False
        )


def test_train_errors(tmp_path):
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig
    from chameleon_lite.train.tokenizer_loop import train_image_vq

    with pytest.raises(ConfigError):
        ImageVQTrainConfig(steps=0)
    with pytest.raises(ConfigError, match="override"):
        ImageVQTrainConfig(model_overrides={"nope": 1})
    with pytest.raises(ConfigError, match=r"betas must be two numbers in \[0, 1\)"):
        ImageVQTrainConfig(betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="betas"):
        ImageVQTrainConfig(betas=(0.9,))
    with pytest.raises(ConfigError, match="foreground_weight"):
        ImageVQTrainConfig(foreground_weight=-1.0)
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"segments": [{"text": "only words"}]}) + "\n")
    with pytest.raises(DataError, match="no image segments"):
        train_image_vq(str(m), str(tmp_path / "o"), ImageVQTrainConfig(model_overrides=SMALL, steps=1), progress=False)
    (tmp_path / "bad.png").write_text("not a picture")
    m.write_text(json.dumps({"segments": [{"image": "bad.png"}]}) + "\n")
    with pytest.raises(DataError, match="bad.png"):
        train_image_vq(str(m), str(tmp_path / "o"), ImageVQTrainConfig(model_overrides=SMALL, steps=1), progress=False)


def test_evaluate_on_a_procedural_manifest(tmp_path):
    """evaluate reads the manifest's pictures and ground truth; cell_invariance compares a shape's codes over the 9
    cells (a constant tokenizer is trivially invariant; at a side that does not split into whole patches per cell
    there is nothing to compare)."""
    from chameleon_lite.data.procedural import CorpusConfig, write_corpus
    from chameleon_lite.tokenizers.image_train import cell_invariance, evaluate

    manifest = write_corpus(str(tmp_path / "c"), 12, seed=1, config=CorpusConfig(image_size=48), progress=False)
    tok = small_tokenizer(image_size=48)  # grid 6 x 6: 2 x 2 patches per cell
    tok.save(str(tmp_path / "tok"))
    r = evaluate(str(tmp_path / "tok"), manifest, n=5, progress=False, grid_path=str(tmp_path / "grid.png"))
    assert r["images"] == 5 and r["checker_truth_original"] == 1.0 and 0 <= r["checker_agreement"] <= 1
    assert r["tokens_per_image"] == 36 and 0 < r["codebook_usage"] <= 1 and os.path.isfile(tmp_path / "grid.png")
    assert 0.0 <= r["cell_invariance"] <= 1.0
    const = small_tokenizer(image_size=48)
    const.encode_rgb = lambda rgb: torch.zeros(len(rgb), 6, 6, dtype=torch.int64)
    assert cell_invariance(const) == 1.0
    shifted = small_tokenizer(image_size=48)  # codes that carry the cell: never the same
    shifted.encode_rgb = lambda rgb: torch.arange(len(rgb)).view(-1, 1, 1).expand(-1, 6, 6) % 9
    assert cell_invariance(shifted) == 0.0
    assert cell_invariance(small_tokenizer(image_size=16)) is None


def test_pixel_losses_weigh_the_foreground():
    from chameleon_lite.tokenizers.image_train import pixel_losses

    x = -torch.ones(2, 3, 8, 8)  # black pictures, one red pixel in the first
    x[0, 0, 3, 4] = 0.8
    y = x.clone()
    y[0, :, 3, 4] -= 0.5  # an error on the red pixel ...
    y[1, :, 0, 0] += 0.5  # ... and as large an error on a background pixel
    l1, l2 = pixel_losses(y, x, 0.0)
    assert l1 == pytest.approx((y - x).abs().mean().item()) and l2 == pytest.approx((y - x).pow(2).mean().item())
    (f1, _), (b1, _) = (pixel_losses(y[:1], x[:1], 4.0), pixel_losses(y[1:], x[1:], 4.0))
    assert f1 / b1 == pytest.approx(5.0 * 64 / (64 + 4), rel=1e-5)  # 5x the weight, mean weight renormalised
    # on pictures without a plain background every pixel is foreground: the same as unweighted
    z = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.allclose(torch.stack(pixel_losses(z + 0.1, z, 4.0)), torch.stack(pixel_losses(z + 0.1, z, 0.0)))


def test_cli_train_and_recon(tmp_path, capsys):
    from chameleon_lite.cli import main

    manifest = _manifest(tmp_path, 4)
    out = str(tmp_path / "tok")
    # The CLI trains presets; a tiny preset run of one step is cheap enough here.
    assert (
        main(["tokenizer", "train-image", "--manifest", manifest, "--out", out, "--steps", "1", "--batch-size", "2"])
        == 0
    )
    png = str(tmp_path / "r.png")
    assert main(["tokenizer", "image-recon", "--tokenizer", out, "--out", png, str(tmp_path / "img" / "1.png")]) == 0
    assert Image.open(png).size[0] > 0
    assert main(["tokenizer", "image-recon", "--tokenizer", out, "--out", png, str(tmp_path / "m.jsonl")]) == 1
    assert "m.jsonl" in capsys.readouterr().err


def test_finetune_decoder_keeps_the_codes(tmp_path, capsys):
    """Decoder fine-tuning trains the decoder only: encoder and codebook stay bit-identical (every picture keeps its
    codes), the decoder reconstructs the training pictures better than before, a resumed run repeats an
    uninterrupted one, and a checkpoint of another kind of run is refused."""
    from chameleon_lite.cli import main
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig, load_image_set
    from chameleon_lite.train.tokenizer_loop import code_path_state, train_image_vq

    rng = np.random.default_rng(0)  # pictures of two flat halves: something a decoder can learn in a few steps
    os.makedirs(tmp_path / "img")
    for i in range(8):
        img = np.empty((16, 16, 3), np.uint8)
        img[:, :8], img[:, 8:] = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"segments": [{"image": f"img/{i}.png"}]}) + "\n" for i in range(8))
    )
    manifest = str(tmp_path / "m.jsonl")
    base = str(tmp_path / "base")
    small_tokenizer().save(base)
    pics = load_image_set([str(tmp_path / "img" / f"{i}.png") for i in range(8)], 16, progress=False)

    def cfg(steps):
        return ImageVQTrainConfig(
            finetune_decoder=base,
            steps=steps,
            batch_size=8,
            lr=1e-2,
            warmup=1,
            grid_every=100,
            ckpt_every=50,
            log_every=10,
            autocast=False,
        )

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    s = train_image_vq(manifest, a, cfg(150), progress=False)
    assert (
        s["train_config"]["finetune_decoder"] == base and s["model_config"] == ImageTokenizer.load(base).cfg.to_dict()
    )
    before, after = ImageTokenizer.load(base, autocast=None), ImageTokenizer.load(a, autocast=None)
    frozen, tuned = code_path_state(before.model), code_path_state(after.model)
    assert frozen.keys() == tuned.keys() and all(torch.equal(frozen[k], tuned[k]) for k in frozen)
    assert any(
        not torch.equal(v, after.model.state_dict()[k])
        for k, v in before.model.state_dict().items()
        if k.startswith("decoder.")
    )
    codes = before.encode_rgb(pics)
    assert torch.equal(after.encode_rgb(pics), codes)

    def err(tok):
        return float(np.abs(tok.decode(codes).astype(np.float64) - pics).mean())

    assert err(after) < 0.5 * err(before)  # measured 13.8 vs 67.7 (mean abs error, 8-bit levels)

    train_image_vq(manifest, b, cfg(2), progress=False)
    train_image_vq(manifest, b, cfg(150), progress=False)  # resumes at step 2
    wa, wb = ImageTokenizer.load(a).model.state_dict(), ImageTokenizer.load(b).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    with pytest.raises(ConfigError, match="finetune_decoder"):  # a from-scratch checkpoint is not resumed
        train_image_vq(manifest, a, ImageVQTrainConfig(model_overrides=SMALL, steps=200), progress=False)
    with pytest.raises(ConfigError, match="not a folder"):
        ImageVQTrainConfig(finetune_decoder=str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="image tokenizer config"):
        ImageVQTrainConfig(finetune_decoder=str(tmp_path / "empty"))
    other = small_tokenizer()  # the base replaced by another tokenizer of the same shape mid-run
    torch.nn.init.normal_(next(other.model.encoder.parameters()))
    other.save(base)
    with pytest.raises(ConfigError, match="changed since"):
        train_image_vq(manifest, b, cfg(200), progress=False)

    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "tokenizer",
                "train-image",
                "--manifest",
                manifest,
                "--out",
                out,
                "--finetune-decoder",
                a,
                "--steps",
                "1",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    assert torch.equal(ImageTokenizer.load(out, autocast=None).encode_rgb(pics), codes)
    assert (
        main(
            [
                "tokenizer",
                "train-image",
                "--manifest",
                manifest,
                "--out",
                str(tmp_path / "x"),
                "--finetune-decoder",
                a,
                "--model.codebook_dim=8",
            ]
        )
        == 1
    )
    assert "--model.KEY" in capsys.readouterr().err


def test_an_interrupted_run_resumes_exactly(tmp_path):
    """Stopped after a checkpoint and run again, training repeats the uninterrupted run bit for bit: weights,
    both optimisers, the discriminator, the batch generator and torch's global RNG (dead-code replacement) all
    come back from the checkpoint."""
    from safetensors.torch import load_file

    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig
    from chameleon_lite.train.tokenizer_loop import train_image_vq

    manifest = _manifest(tmp_path)
    kw = dict(model_overrides=SMALL, batch_size=4, warmup=2, log_every=1, ckpt_every=3, grid_every=3, disc_start=2)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_image_vq(manifest, a, ImageVQTrainConfig(steps=6, **kw), progress=False)
    train_image_vq(manifest, b, ImageVQTrainConfig(steps=3, **kw), progress=False)
    train_image_vq(manifest, b, ImageVQTrainConfig(steps=6, **kw), progress=False)

    def log(out):
        return [
            {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in open(f"{out}/run/image/log.jsonl")
        ]

    assert log(a) == log(b) and [r["step"] for r in log(b)] == [1, 2, 3, 4, 5, 6]
    wa, wb = load_file(f"{a}/{IMAGE_WEIGHTS}"), load_file(f"{b}/{IMAGE_WEIGHTS}")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
