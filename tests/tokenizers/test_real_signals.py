"""Tokenizers on real signals: grayscale pictures stay grey, training data streams from disk and resumes exactly, the
digits/speech presets build, and the real-signal measurement (chameleon_lite/eval/real_signals.py) runs."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.tokenizers import audio as A
from chameleon_lite.tokenizers import image as I
from chameleon_lite.tokenizers.train_data import ImageSource, LazyItems, manifest_media

ASSETS = os.path.join(os.path.dirname(I.__file__), "..", "assets", "tokenizers", "digits")
AVMNIST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "avmnist")
SMALL_DIGITS = dict(channels=(8, 8), dec_channels=(8, 8), res_blocks=0, codebook_size=16, codebook_dim=4)
SMALL_SPEECH = dict(channels=(4, 4, 4), res_blocks=0, codebook_size=8, codebook_dim=8, latent_dim=8, istft_dim=8)


def _digit(value: int, shape=(28, 28), seed: int = 0) -> np.ndarray:
    """A stroke of gray ``value`` on black, uint8 [H, W]."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint8)
    h, w = shape
    c = int(rng.integers(w // 3, 2 * w // 3))
    img[h // 5 : 4 * h // 5, c - 2 : c + 2] = value
    img[h // 5 : h // 5 + 3, c - 6 : c + 2] = value
    return img


def _fixture(tmp_path, n: int = 6) -> tuple[str, str]:
    """(image manifest, audio manifest): n small grayscale PNGs with MNIST-style meta, n WAVs of FSDD-style meta."""
    os.makedirs(tmp_path / "img")
    os.makedirs(tmp_path / "wav")
    img_docs, wav_docs = [], []
    for i in range(n):
        Image.fromarray(_digit(100 + 20 * i, seed=i)).save(tmp_path / "img" / f"{i}.png")
        img_docs.append({"segments": [{"image": f"img/{i}.png"}], "meta": {"index": i, "label": i % 10}})
        t = np.arange(4000 + 400 * i) / 8000
        sf.write(tmp_path / "wav" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 8000)
        meta = {"label": i % 10, "speaker": "george" if i % 2 else "theo", "index": 10 + i}
        wav_docs.append({"segments": [{"audio": f"wav/{i}.wav"}], "meta": meta})
    for name, docs in (("images.jsonl", img_docs), ("audio.jsonl", wav_docs)):
        (tmp_path / name).write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(tmp_path / "images.jsonl"), str(tmp_path / "audio.jsonl")


def _small_tokenizers(folder: str) -> None:
    torch.manual_seed(0)
    model = I.ImageVQModel(I.preset("digits", **SMALL_DIGITS)).train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28) * 2 - 1)
    I.save_model(model.eval(), folder)
    A.save_model(A.AudioCodecModel(A.preset("speech", **SMALL_SPEECH)).eval(), folder)


# ---------------------------------------------------------------------------------------------- presets, grey
def test_presets_build_and_round_trip_shapes():
    img = I.preset("digits")
    assert (img.image_size, img.grid, img.in_channels, img.padding) == (28, (7, 7), 1, "zeros")
    assert I.ImageVQConfig.from_dict(json.loads(json.dumps(img.to_dict()))) == img
    sp = A.preset("speech")
    assert (sp.sample_rate, sp.hop, sp.frame_rate, sp.decoder) == (8000, 80, 100.0, "istft")
    model = A.AudioCodecModel(A.preset("speech", **SMALL_SPEECH)).eval()
    tok = A.AudioTokenizer(model)
    codes = tok.encode_waveform(np.zeros(800, np.float32))
    assert tuple(codes.shape) == (4, 10) and tok.decode(codes).shape == (800,)
    with pytest.raises(ConfigError, match="in_channels"):
        I.ImageVQConfig(in_channels=2)


def test_grayscale_model_decodes_grey_for_any_input_shape():
    """One channel in, one out: a grey picture of any shape comes back with R = G = B (no false colour)."""
    torch.manual_seed(0)
    model = I.ImageVQModel(I.preset("digits", **SMALL_DIGITS)).train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28) * 2 - 1)
    tok = I.ImageTokenizer(model, autocast=None)
    for shape in ((28, 28), (28, 40), (50, 31)):
        out = tok.reconstruct([_digit(128, shape)])
        assert out.shape == (1, 28, 28, 3)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    rgb = np.stack([np.full((4, 4, 3), (30, 60, 90), np.uint8)])
    assert torch.allclose(I.to_model_input(rgb, channels=1), torch.full((1, 1, 4, 4), 60 / 127.5 - 1))


@pytest.mark.skipif(not os.path.isfile(os.path.join(ASSETS, "image_vq.json")), reason="digits tokenizer not shipped")
def test_shipped_digits_tokenizer_keeps_grey_and_any_background():
    """A grey digit (stroke 140 on black, 28x36) comes back grey, plain grey pictures keep their level, and a dark
    digit on white paper keeps its white: no background is assumed."""
    tok = I.ImageTokenizer.load(ASSETS)
    src = _digit(140, (28, 36))
    out = tok.reconstruct([src, 255 - _digit(255, (28, 36))]).astype(int)
    stroke = src[:, 4:32] > 0  # the centre crop the tokenizer sees
    assert (out[..., 0] == out[..., 2]).all()
    assert abs(out[0, ..., 0][stroke].mean() - 140) < 20 and out[0, ..., 0][~stroke].mean() < 20
    assert out[1, ..., 0][~stroke].mean() > 235 and out[1, ..., 0][stroke].mean() < 100
    for level in (60, 128, 200):
        assert abs(tok.reconstruct([np.full((28, 40), level, np.uint8)]).mean() - level) < 12


def test_intensity_remap_inverts_and_rescales_without_a_background_guess():
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig, remap_intensity

    x = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).repeat(400, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    v = ((remap_intensity(x, 1.0, g) + 1) / 2).view(400, 2)
    assert ((v >= 0) & (v <= 1)).all() and 0.3 < (v[:, 0] > v[:, 1]).float().mean() < 0.7  # about half inverted
    assert (v[:, 0] <= 0.5).sum() > 150 and (v[:, 0] >= 0.5).sum() > 150
    assert torch.equal(remap_intensity(x, 0.0, g), x)
    with pytest.raises(ConfigError, match="intensity_augment"):
        ImageVQTrainConfig(intensity_augment=1.5)


# ---------------------------------------------------------------------------------------------- streaming
def test_lazy_items_read_on_demand_with_a_bounded_cache():
    reads = []
    items = LazyItems([f"p{i}" for i in range(10)], lambda p: reads.append(p) or p.upper(), cache_items=2)
    assert [items[i] for i in (0, 1, 0, 2, 1)] == ["P0", "P1", "P0", "P2", "P1"]
    assert reads == ["p0", "p1", "p2", "p1"] and len(items.cache) == 2  # p1 fell out when p2 came in
    with pytest.raises(ConfigError, match="cache_items"):
        LazyItems([], str, cache_items=-1)


def test_split_filter_and_image_source(tmp_path):
    images, audio = _fixture(tmp_path)
    from chameleon_lite.data.splits import split_of_mnist

    want = [i for i in range(6) if split_of_mnist(i) == "train"]
    got = manifest_media(images, "image", "train")
    assert [os.path.basename(p) for p, _ in got] == [f"{i}.png" for i in want]
    assert [os.path.basename(p) for p, _ in manifest_media(audio, "audio", "test")] == ["1.wav", "3.wav", "5.wav"]
    src = ImageSource([p for p, _ in manifest_media(images, "image")], 28, cache_items=1)
    batch = src.take(np.array([3, 3, 5]))
    assert batch.shape == (3, 28, 28, 3) and src.items.reads == 2
    with pytest.raises(ConfigError, match="split"):
        manifest_media(images, "image", "holdout")


def test_streaming_training_resumes_exactly(tmp_path):
    """Batches are a function of seed and step: 4 steps in one go equal 2 steps, a stop, and 2 more, with a cache
    smaller than the data so that pictures are read from disk again after the resume."""
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig
    from chameleon_lite.train.tokenizer_loop import train_image_vq

    images, _ = _fixture(tmp_path)

    def cfg(steps):
        return ImageVQTrainConfig(
            preset="digits", model_overrides=SMALL_DIGITS, steps=steps, batch_size=4, cache_images=2, warmup=1,
            grid_every=100, ckpt_every=2, log_every=1, threads=1,
        )  # fmt: skip

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_image_vq(images, a, cfg(4), progress=False)
    train_image_vq(images, b, cfg(2), progress=False)
    train_image_vq(images, b, cfg(4), progress=False)
    wa, wb = I.load_model(a).state_dict(), I.load_model(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------------------------- measurement
def test_real_signal_measurement_on_a_few_files(tmp_path):
    from chameleon_lite.eval.real_signals import GRID_FILE, RESULT_FILE, evaluate_real

    images, audio = _fixture(tmp_path, n=4)
    toks = str(tmp_path / "tok")
    _small_tokenizers(toks)
    out = str(tmp_path / "out")
    res = evaluate_real(toks, out, images=images, audio=audio, split="", n_clips=3, progress=False)
    assert json.load(open(os.path.join(out, RESULT_FILE)))["written"]["images"] == 4
    w, s = res["written"], res["spoken"]
    assert w["tokens_per_image"] == 49 and np.isfinite(w["psnr_db"]) and w["images_per_s"] > 0
    assert s["clips"] == 3 and np.isfinite(s["si_snr_db"]) and s["clips_per_s"] > 0
    assert s["stoi"] is None or 0 <= s["stoi"] <= 1
    for v in (w, s):
        assert ("judge_missing" in v) or 0 <= v["judge_accuracy_reconstruction"] <= 1
    assert res["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert os.path.isfile(os.path.join(out, GRID_FILE)) and os.path.isfile(os.path.join(out, "clips", "recon_2.wav"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(AVMNIST, "fsdd")), reason="AV-MNIST data not in ../shared/data")
def test_real_signal_measurement_on_real_recordings(tmp_path):
    """Three real recordings of the held-out speaker: STOI is defined for them and the codec keeps their length."""
    from chameleon_lite.eval.real_signals import evaluate_real

    rec = os.path.abspath(os.path.join(AVMNIST, "fsdd", "recordings"))
    docs = [{"segments": [{"audio": os.path.join(rec, f"{d}_george_7.wav")}], "meta": {"label": d, "speaker": "george",
            "index": 7}} for d in (1, 5, 8)]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    toks = str(tmp_path / "tok")
    _small_tokenizers(toks)
    res = evaluate_real(toks, str(tmp_path / "out"), audio=str(tmp_path / "a.jsonl"), progress=False)
    assert res["spoken"]["clips"] == 3 and res["spoken"]["stoi_clips"] >= 1


def test_measurement_bad_inputs_are_one_clear_line(tmp_path, capsys):
    from chameleon_lite.cli import main
    from chameleon_lite.eval.real_signals import evaluate_real

    images, _ = _fixture(tmp_path, n=2)
    with pytest.raises(ConfigError, match="--images MANIFEST"):
        evaluate_real(str(tmp_path), str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="holds no image_vq.json"):
        evaluate_real(str(tmp_path), str(tmp_path / "o"), images=images)
    with pytest.raises(DataError, match="manifest not found"):
        evaluate_real(str(tmp_path), str(tmp_path / "o"), images=str(tmp_path / "nope.jsonl"))
    toks = str(tmp_path / "tok")
    _small_tokenizers(toks)
    rc = main(["tokenizer", "eval-real", "--tokenizers", toks, "--images", images, "--out", str(tmp_path / "o"),
               "--split", "test"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "no image segments in split 'test'" in err
