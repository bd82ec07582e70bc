import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from chameleon_lite.bundle import AUDIO_CONFIG, AUDIO_WEIGHTS
from chameleon_lite.cli import main
from chameleon_lite.data.audio_files import load_audio
from chameleon_lite.data.procedural import CorpusConfig, write_corpus
from chameleon_lite.errors import ConfigError, DataError
from chameleon_lite.tokenizers.audio import PRESETS, AudioCodecConfig, AudioCodecModel, AudioTokenizer, preset
from chameleon_lite.tokenizers.audio_train import (
    AudioCodecTrainConfig,
    evaluate,
    mel_filterbank,
    random_crops,
    si_snr,
)
from chameleon_lite.tokenizers.loader import Tokenizers
from chameleon_lite.train.tokenizer_loop import code_path_state, train_audio_codec
from chameleon_lite.vocab import UnifiedVocab, VocabError

# hop 64 at 16 kHz (250 frames/s), 2 levels x 16 codes: fast enough for unit tests
SMALL = dict(
    strides=(4, 4, 4),
    channels=(4, 8, 8),
    dec_channels=(4, 8, 8),
    out_channels=4,
    res_blocks=1,
    latent_dim=8,
    codebook_dim=8,
    num_levels=2,
    codebook_size=16,
    kmeans_iters=2,
    quantizer_dropout=0.5,
    min_levels=1,
)


def small_codec(**kw) -> AudioTokenizer:
    torch.manual_seed(0)
    model = AudioCodecModel(preset("tiny", **{**SMALL, **kw})).train()
    with torch.no_grad():  # a training-mode pass runs the k-means initialisation of every level
        model(torch.randn(4, 1, 64 * 32) * 0.3)
    return AudioTokenizer(model)


@pytest.fixture(scope="module")
def tok():
    return small_codec()


def tone(seconds=0.5, sr=16000, f=440.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.4 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


# ---------------------------------------------------------------------------------------------- config
def test_config_and_presets():
    assert preset("tiny").hop == 320 and preset("tiny").frame_rate == 50.0
    assert (preset("tiny").num_levels, preset("tiny").codebook_size, preset("tiny").sample_rate) == (4, 1024, 16000)
    assert preset("base").sample_rate == 24000 and preset("base").num_levels == 8
    for name in PRESETS:
        cfg = preset(name)
        assert AudioCodecConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        x = torch.randn(1, 1, cfg.hop * 3)
        m = AudioCodecModel(cfg).eval()
        with torch.no_grad():
            assert m.encoder(x).shape == (1, cfg.latent_dim, 3)  # exactly one latent per hop, odd strides too
            assert m.decoder(m.encoder(x)).shape == x.shape
    for kw in (dict(upsample="nearest"), dict(res_after_upsample=False)):
        m = AudioCodecModel(preset("tiny", **kw, **SMALL)).eval()
        with torch.no_grad():
            assert m.decoder(m.encoder(torch.randn(1, 1, 64 * 5))).shape == (1, 1, 64 * 5)
    m = AudioCodecModel(preset("tiny", decoder="istft", istft_dim=16, istft_blocks=1, **SMALL)).eval()
    with torch.no_grad():
        assert m.decoder(m.encoder(torch.randn(1, 1, 64 * 5))).shape == (1, 1, 64 * 5)
    with pytest.raises(ConfigError, match="decoder"):
        AudioCodecConfig(decoder="wavenet")
    with pytest.raises(ConfigError, match="istft"):
        AudioCodecConfig(istft_fft_mult=0)
    # a config file written before the decoder order was a field describes the old order
    legacy = preset("tiny").to_dict()
    del legacy["res_after_upsample"]
    assert AudioCodecConfig.from_dict(legacy).res_after_upsample is False
    assert preset("tiny", res_after_upsample=True).res_after_upsample is True
    with pytest.raises(ConfigError, match="upsample"):
        AudioCodecConfig(upsample="linear")
    with pytest.raises(ConfigError, match="strides"):
        AudioCodecConfig(strides=(1, 4))
    with pytest.raises(ConfigError, match="width"):
        AudioCodecConfig(channels=(4, 8))
    with pytest.raises(ConfigError, match="unknown"):
        AudioCodecConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="spectral_ffts"):
        AudioCodecTrainConfig(spectral_ffts=(2048, 8))
    assert AudioCodecTrainConfig(spectral_ffts=[4096, 512]).spectral_ffts == (4096, 512)


def test_decoder_attention_sees_the_whole_chunk():
    """Attention blocks in front of either decoder: same shapes, near the identity when new, and a frame's output
    depends on codes far beyond the convolutions' reach (but only within its decoding chunk)."""
    for kw in (dict(), dict(decoder="istft", istft_dim=16, istft_blocks=1)):
        plain = small_codec(**kw)
        attn = small_codec(decoder_attention=2, decoder_attention_heads=2, **kw)
        missing, unexpected = attn.model.load_state_dict(plain.model.state_dict(), strict=False)
        assert not unexpected and missing and all(k.startswith("decoder.context.") for k in missing)
        codes = plain.encode(tone(1.0, f=300.0))  # 250 frames
        y0, y1 = plain.decode(codes), attn.decode(codes)
        assert y1.shape == y0.shape and np.isfinite(y1).all()
        # new blocks start near the identity: residual branches scaled by 0.01
        assert 0 < np.abs(y1 - y0).max() < 0.1 * np.abs(y0).max()
        far = codes.clone()
        far[:, -20:] = (far[:, -20:] + 1) % 16  # change only the last 20 frames
        head = slice(0, 100 * 64)  # the first 100 frames' samples: out of reach of every convolution
        np.testing.assert_array_equal(plain.decode(far)[head], y0[head])
        assert not np.array_equal(attn.decode(far)[head], y1[head])
        chunked = small_codec(decoder_attention=2, decoder_attention_heads=2, chunk_seconds=0.2, context_frames=8, **kw)
        chunked.model.load_state_dict(attn.model.state_dict())
        np.testing.assert_array_equal(chunked.decode(far)[head], chunked.decode(codes)[head])  # 50-frame chunks
    with pytest.raises(ConfigError, match="decoder_attention"):
        AudioCodecConfig(decoder_attention=-1)
    with pytest.raises(ConfigError, match="decoder_attention"):
        AudioCodecConfig(latent_dim=64, decoder_attention=1, decoder_attention_heads=5)  # 5 does not divide 64
    legacy = preset("tiny").to_dict()  # a config file written before the field: no blocks
    del legacy["decoder_attention"], legacy["decoder_attention_heads"]
    assert AudioCodecConfig.from_dict(legacy).decoder_attention == 0


# ---------------------------------------------------------------------------------------------- coding
def test_encode_decode_shapes_and_frames(tok, tmp_path):
    x = tone(0.3)
    codes = tok.encode(x)
    assert codes.dtype == torch.int64 and codes.shape == (2, -(-len(x) // 64))
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    y = tok.decode(codes)
    assert y.dtype == np.float32 and y.shape == (codes.shape[1] * 64,) and np.isfinite(y).all()
    path = str(tmp_path / "a.wav")
    sf.write(path, x, 16000, subtype="PCM_16")
    assert torch.equal(tok.encode(path), tok.encode(sf.read(path, dtype="float32")[0]))
    assert tok.encode(np.zeros(1, np.float32)).shape == (2, 1)  # one sample still makes one frame
    assert tok.reconstruct(x).shape == x.shape


def test_inference_codes_equal_the_quantizer_forward(tok):
    rng = np.random.default_rng(1)
    x = torch.from_numpy((0.3 * rng.standard_normal(64 * 200)).astype(np.float32)).view(1, 1, -1)
    with torch.no_grad():
        z = tok.model.encoder(x)
        want = tok.model.quantize(z)[1]
    got = tok.model.encode_codes(z)
    assert not tok.model.training and tok.model._plain_euclidean()  # the fast path, not the fallback
    assert got.shape == want.shape == (1, 2, 200)
    assert torch.equal(got, want)
    cos = small_codec()
    cos.model.quantizer.layers[0].use_cosine_sim = True  # another codebook kind takes the quantizer's forward
    assert not cos.model._plain_euclidean()


def test_chunked_coding_equals_one_pass(tok):
    x = tone(1.0, f=300.0) + 0.05 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    whole = tok.encode(x)
    chunked = small_codec(chunk_seconds=0.1, context_frames=24)  # 25 frames per chunk, 10 chunks
    chunked.model.load_state_dict(tok.model.state_dict())
    assert len(chunked._chunks(whole.shape[1])) > 5
    assert torch.equal(chunked.encode(x), whole)
    np.testing.assert_allclose(chunked.decode(whole), tok.decode(whole), atol=1e-5)
    # the STFT decoder too: each frame reaches istft_fft_mult hops, well inside the context
    one = small_codec(decoder="istft", istft_dim=16, istft_blocks=2)
    many = small_codec(decoder="istft", istft_dim=16, istft_blocks=2, chunk_seconds=0.1, context_frames=24)
    many.model.load_state_dict(one.model.state_dict())
    codes = one.encode(x)
    assert torch.equal(many.encode(x), codes)
    np.testing.assert_allclose(many.decode(codes), one.decode(codes), atol=1e-5)


def test_conversions_are_reported(tok, tmp_path):
    path = str(tmp_path / "stereo44k.wav")
    sf.write(path, tone(0.5, sr=44100, channels=2), 44100, subtype="PCM_16")
    wave, info = load_audio(path, 16000)
    assert info.resampled and info.downmixed and info.sample_rate == 44100 and info.channels == 2
    assert "2 channels averaged" in info.describe() and "44100" in info.describe()
    assert abs(len(wave) - 8000) <= 2
    codes = tok.encode(path)
    assert tok.last_info.resampled and codes.shape[1] == -(-len(wave) // 64)
    # arrays: [C, T] or [T, C] at an explicit rate; integer PCM scaled
    w2, info2 = load_audio(tone(0.25, sr=8000, channels=2).T, 16000, sample_rate=8000)
    assert info2.resampled and info2.downmixed and abs(len(w2) - 4000) <= 2
    pcm = (tone(0.1) * 32767).astype(np.int16)
    w3, _ = load_audio(pcm, 16000)
    np.testing.assert_allclose(w3, tone(0.1), atol=1e-4)
    _, same = load_audio(tone(0.1), 16000)
    assert not same.resampled and not same.downmixed and "as is" in same.describe()


def test_bad_input_names_the_file(tok, tmp_path):
    with pytest.raises(DataError, match="missing.wav.*not found"):
        tok.encode(str(tmp_path / "missing.wav"))
    txt = tmp_path / "notes.wav"
    txt.write_text("this is not audio")
    with pytest.raises(DataError, match="notes.wav.*not a readable audio file"):
        tok.encode(str(txt))
    mp3 = tmp_path / "junk.mp3"
    mp3.write_bytes(os.urandom(2000))
    with pytest.raises(DataError, match="junk.mp3"):
        tok.encode(str(mp3))
    good = str(tmp_path / "good.wav")
    sf.write(good, tone(0.5), 16000, subtype="PCM_16")
    data = open(good, "rb").read()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.wav.*truncated"):
        tok.encode(str(cut))
    empty = str(tmp_path / "empty.wav")
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="empty.wav.*no samples"):
        tok.encode(empty)
    nan = str(tmp_path / "nan.wav")
    x = tone(0.1)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav.*NaN"):
        tok.encode(nan)
    with pytest.raises(DataError, match="NaN"):
        tok.encode(np.array([0.0, np.inf], np.float32))
    with pytest.raises(DataError, match="empty"):
        tok.encode(np.zeros(0, np.float32))
    with pytest.raises(DataError, match="sample_rate"):
        tok.encode(tone(0.1), sample_rate=10)
    with pytest.raises(DataError, match="waveform"):
        tok.encode(np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match="is a directory, not an audio file"):
        tok.encode(str(tmp_path))
    # codes for decode
    with pytest.raises(DataError, match="outside"):
        tok.decode(torch.tensor([[0, 16], [1, 1]]))
    with pytest.raises(DataError, match="shape"):
        tok.decode(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(DataError, match="integers"):
        tok.decode(torch.zeros(2, 4))


def test_silence_codes_and_decodes_finite(tok):
    codes = tok.encode(np.zeros(16000, np.float32))
    y = tok.decode(codes)
    assert np.isfinite(y).all() and codes.shape == (2, 250)


def test_fewer_levels_need_dropout_training():
    with_dropout = small_codec()
    codes = with_dropout.encode(tone(0.2))
    assert with_dropout.decode(codes[:1]).shape == with_dropout.decode(codes).shape
    without = small_codec(quantizer_dropout=0.0)
    with pytest.raises(DataError, match="without quantizer dropout"):
        without.decode(without.encode(tone(0.2))[:1])
    three = small_codec(num_levels=3, min_levels=2)  # dropout keeps 2 or 3 levels: 1 is not a trained case
    codes = three.encode(tone(0.2))
    assert three.decode(codes[:2]).shape == three.decode(codes).shape
    with pytest.raises(DataError, match="at least 2"):
        three.decode(codes[:1])


# ---------------------------------------------------------------------------------------------- unified ids
def test_unified_ids_frame_major(tok):
    vocab = UnifiedVocab(text_size=300, image_codebook=16, audio_levels=2, audio_codebook=16)
    codes = tok.encode(tone(0.1))
    ids = tok.to_unified(codes, vocab)
    assert ids.shape == (codes.numel(),)
    a0 = vocab.audio_offset
    assert int(ids[0]) == a0 + int(codes[0, 0]) and int(ids[1]) == a0 + 16 + int(codes[1, 0])
    assert torch.equal(tok.from_unified(ids, vocab), codes)
    with pytest.raises(VocabError, match="whole number of frames"):
        tok.from_unified(ids[:-1], vocab)
    swapped = ids.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(VocabError, match="level"):
        tok.from_unified(swapped, vocab)
    with pytest.raises(VocabError):
        tok.from_unified(torch.tensor([5, a0 + 16]), vocab)  # a text id inside an audio span
    with pytest.raises(ConfigError, match="audio levels"):
        tok.to_unified(codes, UnifiedVocab(text_size=300, image_codebook=16, audio_levels=4, audio_codebook=16))
    with pytest.raises(DataError, match="all 2 levels"):
        tok.to_unified(codes[:1], vocab)


# ---------------------------------------------------------------------------------------------- files
def test_save_load_and_bundle(tok, tmp_path):
    from chameleon_lite.tokenizers.text import TextTokenizer

    d = str(tmp_path / "tok")
    tok.save(d)
    again = AudioTokenizer.load(d)
    x = tone(0.2)
    assert torch.equal(again.encode(x), tok.encode(x))
    TextTokenizer.train(iter(["a b c d e"] * 20), vocab_size=270, progress=False).save(d)
    bundle = Tokenizers.load(d)
    assert bundle.audio is not None and bundle.vocab.audio_levels == 2 and bundle.vocab.audio_codebook == 16
    with open(os.path.join(d, AUDIO_CONFIG)) as f:
        cfg = json.load(f)
    cfg["num_levels"] = 3
    with open(os.path.join(d, AUDIO_CONFIG), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ConfigError, match="do not match"):
        AudioTokenizer.load(d)
    open(os.path.join(d, AUDIO_WEIGHTS), "wb").write(b"garbage")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        AudioTokenizer.load(d)


# ---------------------------------------------------------------------------------------------- losses
def test_si_snr_and_mel_filterbank():
    x = torch.from_numpy(tone(0.1))[None]
    assert float(si_snr(3.0 * x, x)) > 60  # scale-invariant
    noisy = x + 0.1 * torch.randn_like(x)
    want = 10 * np.log10(float((x**2).sum()) / float(((noisy - x) ** 2).sum()))
    assert abs(float(si_snr(noisy, x)) - want) < 0.3
    fb = mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and bool((fb >= 0).all()) and bool((fb.sum(1) > 0).all())


def test_spectral_floor_ignores_what_lies_below_it():
    """floor_db=0 is the absolute 1e-5 floor alone (the log terms then also count errors 80 dB down); a relative floor
    of -50 dB leaves out an error 80 dB under the clip's loudest bin and keeps one 20 dB under it."""
    from chameleon_lite.tokenizers.audio_train import MultiScaleSpectralLoss

    x = torch.from_numpy(tone(0.1))[None]
    g = torch.Generator().manual_seed(0)
    faint, loud = (x + a * float(x.abs().max()) * torch.randn(x.shape, generator=g) for a in (1e-4, 1e-1))
    plain, floored = MultiScaleSpectralLoss(16000), MultiScaleSpectralLoss(16000, floor_db=-50)
    assert float(plain(x, x)[0]) == 0 and float(floored(x, x)[0]) == 0
    assert float(plain(faint, x)[1]) > 0.5  # the log-magnitude term is mostly about the empty bins
    assert float(floored(faint, x)[0]) < 1e-3 and float(floored(faint, x)[1]) < 1e-2
    assert float(floored(loud, x)[0]) > 0.1 and float(floored(loud, x)[1]) > 0.1
    with pytest.raises(ConfigError, match="spectral_floor_db"):
        AudioCodecTrainConfig(spectral_floor_db=-200)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    weights = {"caption_to_audio": 1.0, "audio_to_caption": 1.0}
    return write_corpus(
        str(tmp_path_factory.mktemp("corpus")), 12, seed=0, config=CorpusConfig(task_weights=weights), progress=False
    )


def _cfg(steps):
    return AudioCodecTrainConfig(
        preset="tiny",
        model_overrides=SMALL,
        steps=steps,
        batch_size=4,
        segment_frames=16,
        sample_every=2,
        ckpt_every=2,
        log_every=1,
        warmup=1,
    )


@pytest.mark.parametrize("grid", [1, 320])
def test_random_crops_start_on_the_grid(grid):
    """Crops of long clips start at multiples of ``grid`` samples of their clip; short clips are padded in at such
    offsets (each crop is located by matching the ramp it was cut from)."""
    clips = [np.arange(1, n + 1, dtype=np.float32) for n in (5000, 3337, 640, 100)]
    x = random_crops(clips, 400, 960, torch.Generator().manual_seed(0), grid=grid)
    starts, pads = set(), set()
    for row in x[:, 0].numpy():
        nz = np.flatnonzero(row)
        if len(nz) == 960:  # cut from a long clip: the ramp's first value is where the crop starts (1-based)
            assert row[-1] - row[0] == 959
            starts.add(int(row[0]) - 1)
        else:  # a short clip padded in: its first sample (value 1) is where it starts in the crop
            assert row[nz[0]] == 1
            pads.add(int(nz[0]))
    assert starts and pads
    assert all(s % grid == 0 for s in starts | pads)
    assert max(starts) > 320 and len(starts) > 3  # spread over the clips, not stuck at the start
    with pytest.raises(ConfigError, match="grid"):
        random_crops(clips, 1, 960, torch.Generator(), grid=0)


def test_train_resumes_exactly_and_evaluates(corpus, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_audio_codec(corpus, a, _cfg(4), progress=False)
    train_audio_codec(corpus, b, _cfg(2), progress=False)
    s = train_audio_codec(corpus, b, _cfg(4), progress=False)  # resumes from step 2
    wa = AudioTokenizer.load(a).model.state_dict()
    wb = AudioTokenizer.load(b).model.state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    run = os.path.join(b, "run", "audio")
    assert s["steps"] == 4 and os.path.isfile(os.path.join(run, "spectrogram_000004.png"))
    assert os.path.isfile(os.path.join(run, "sample_000004_0.wav")) and os.path.isfile(
        os.path.join(run, "original_0.wav")
    )
    logs = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in logs)
    nodrop = str(tmp_path / "nodrop")
    small_codec(num_levels=3, quantizer_dropout=0.0).save(nodrop)  # cannot decode from 2 levels: all 3 are measured
    assert "checker_agreement_3_levels" in evaluate(nodrop, corpus, n=2, progress=False)
    res = evaluate(a, corpus, n=5, progress=False, spectrogram_path=str(tmp_path / "spec.png"))
    assert res["clips"] == 5 and 0 <= res["checker_agreement"] <= 1 and "checker_agreement_2_levels" in res
    assert res["checker_truth_original"] == 1.0 and np.isfinite(res["si_snr_db"]) and res["mel_distance"] > 0
    # per timbre of the original: every clip counted once, and together they are the overall agreement
    from chameleon_lite.data.checkers import check_audio
    from chameleon_lite.tokenizers.audio_train import manifest_audio

    timbres = [check_audio(load_audio(p, 16000)[0], 16000).timbre for p, _ in manifest_audio(corpus)[:5]]
    assert {k[6:]: v for k, v in res.items() if k.startswith("clips_")} == {t: timbres.count(t) for t in set(timbres)}
    assert sum(res[f"checker_agreement_{t}"] * res[f"clips_{t}"] for t in set(timbres)) == pytest.approx(
        res["checker_agreement"] * 5
    )
    assert os.path.isfile(str(tmp_path / "spec.png"))
    with pytest.raises(ConfigError, match="different model config"):
        train_audio_codec(
            corpus,
            b,
            AudioCodecTrainConfig(preset="tiny", model_overrides={**SMALL, "latent_dim": 4}, steps=5),
            progress=False,
        )


def test_commands(corpus, tmp_path, capsys):
    out = str(tmp_path / "codec")
    assert (
        main(
            [
                "tokenizer",
                "train-audio",
                "--manifest",
                corpus,
                "--out",
                out,
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--segment-frames",
                "8",
                "--model.strides=[4,4,4]",
                "--model.channels=[4,8,8]",
                "--model.dec_channels=[4,8,8]",
                "--model.num_levels=2",
                "--model.codebook_size=16",
                "--model.latent_dim=8",
                "--model.codebook_dim=8",
                "--model.min_levels=1",
            ]
        )
        == 0
    )
    assert "trained 2 steps" in capsys.readouterr().out
    wav = next(
        os.path.join(os.path.dirname(corpus), "audio", f)
        for f in sorted(os.listdir(os.path.join(os.path.dirname(corpus), "audio")))
    )
    assert main(["tokenizer", "encode-audio", "--tokenizer", out, wav]) == 0
    text = capsys.readouterr().out
    assert "level 0:" in text and "level 1:" in text
    assert (
        main(["tokenizer", "audio-recon", "--tokenizer", out, "--out", str(tmp_path / "rec"), "--levels", "1", wav])
        == 0
    )
    assert len(os.listdir(tmp_path / "rec")) == 1
    capsys.readouterr()
    # its own WAV is replaced on a rerun; a user's file of the same name is not, and nothing is written
    assert main(["tokenizer", "audio-recon", "--tokenizer", out, "--out", str(tmp_path / "rec"), wav]) == 0
    recon = tmp_path / "rec" / os.listdir(tmp_path / "rec")[0]
    recon.write_bytes(open(wav, "rb").read())  # a WAV this tool did not write
    assert main(["tokenizer", "audio-recon", "--tokenizer", out, "--out", str(tmp_path / "rec"), wav]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "was not written by chameleon-lite" in err
    assert recon.read_bytes() == open(wav, "rb").read()
    assert main(["tokenizer", "audio-recon", "--tokenizer", out, "--out", str(tmp_path / "rec2"), wav, wav]) == 1
    assert "would replace an earlier input's" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "rec2")
    assert (
        main(
            [
                "tokenizer",
                "eval-audio",
                "--tokenizer",
                out,
                "--manifest",
                corpus,
                "--n",
                "3",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.load(open(tmp_path / "e.json"))["clips"] == 3
    assert main(["tokenizer", "train-audio", "--manifest", corpus, "--out", out, "--set", "oops"]) != 0
    assert main(["tokenizer", "encode-audio", "--tokenizer", out, str(tmp_path / "nope.wav")]) != 0
    assert "nope.wav" in capsys.readouterr().err


def test_finetune_decoder_keeps_the_codes(corpus, tmp_path, capsys):
    """Decoder fine-tuning trains only the codec's decoder: encoder and codebooks stay bit-identical (every clip keeps
    its codes), its reconstructions get closer to the clips, a resumed run repeats an uninterrupted one, and a
    checkpoint of another kind of run is refused."""
    from chameleon_lite.tokenizers.audio_train import MultiScaleSpectralLoss, load_clips, manifest_audio

    base = str(tmp_path / "base")
    small_codec().save(base)

    def cfg(steps):
        return AudioCodecTrainConfig(
            finetune_decoder=base,
            steps=steps,
            batch_size=4,
            segment_frames=16,
            lr=3e-3,
            warmup=1,
            sample_every=100,
            ckpt_every=20,
            log_every=5,
        )

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    s = train_audio_codec(corpus, a, cfg(40), progress=False)
    assert s["train_config"]["finetune_decoder"] == base
    before, after = AudioTokenizer.load(base), AudioTokenizer.load(a)
    frozen, tuned = code_path_state(before.model), code_path_state(after.model)
    assert frozen.keys() == tuned.keys() and all(torch.equal(frozen[k], tuned[k]) for k in frozen)
    clips = load_clips([p for p, _ in manifest_audio(corpus)][:4], before.sample_rate, progress=False)
    spectral = MultiScaleSpectralLoss(before.sample_rate)

    def mel(tok):
        out = 0.0
        for w in clips:
            codes = tok.encode_waveform(w)
            assert torch.equal(codes, before.encode_waveform(w))
            r = torch.as_tensor(tok.decode(codes)[: len(w)])[None]
            out += float(spectral(r, torch.as_tensor(w)[None])[0])
        return out / len(clips)

    assert mel(after) < 0.9 * mel(before)

    train_audio_codec(
        corpus, b, cfg(2), progress=False
    )  # (the learning rate of steps 0 and 1 does not depend on steps)
    train_audio_codec(corpus, b, cfg(40), progress=False)  # resumes at step 2
    wa, wb = after.model.state_dict(), AudioTokenizer.load(b).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="finetune_decoder"):
        train_audio_codec(corpus, a, _cfg(60), progress=False)
    with pytest.raises(ConfigError, match="not a folder"):
        AudioCodecTrainConfig(finetune_decoder=str(tmp_path / "nope"))
    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "tokenizer",
                "train-audio",
                "--manifest",
                corpus,
                "--out",
                out,
                "--finetune-decoder",
                a,
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--segment-frames",
                "8",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "tokenizer",
                "train-audio",
                "--manifest",
                corpus,
                "--out",
                str(tmp_path / "x"),
                "--finetune-decoder",
                a,
                "--model.num_levels=3",
            ]
        )
        == 1
    )
    assert "--model.KEY" in capsys.readouterr().err


def test_finetune_decoder_adds_attention_blocks(corpus, tmp_path, capsys):
    """--finetune-decoder with --model.decoder_attention=N: the codec's trained weights plus N new blocks, trained
    with the decoder; codes unchanged; resumes exactly; trained blocks can not be dropped or regrouped."""
    from chameleon_lite.tokenizers.audio_train import finetune_config, finetune_model

    base = str(tmp_path / "base")
    small_codec().save(base)

    def cfg(steps, **over):
        return AudioCodecTrainConfig(
            finetune_decoder=base,
            model_overrides={"decoder_attention": 1, **over},
            steps=steps,
            batch_size=4,
            segment_frames=16,
            lr=3e-3,
            warmup=1,
            sample_every=100,
            ckpt_every=20,
            log_every=5,
        )

    start = finetune_model(base, cfg(1).model_config())
    before = AudioTokenizer.load(base)
    ref = before.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in start.state_dict().items() if k in ref)  # trained weights kept
    assert {k for k in start.state_dict() if k not in ref} and all(
        k.startswith("decoder.context.0.") for k in start.state_dict() if k not in ref
    )
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_audio_codec(corpus, a, cfg(30), progress=False)
    after = AudioTokenizer.load(a)
    assert after.model.cfg.decoder_attention == 1
    frozen, tuned = code_path_state(before.model), code_path_state(after.model)
    assert frozen.keys() == tuned.keys() and all(torch.equal(frozen[k], tuned[k]) for k in frozen)
    scale = after.model.decoder.context[0].scale1
    assert not torch.allclose(scale, torch.full_like(scale, 0.01))  # the new block trained
    x = tone(0.4)
    assert torch.equal(after.encode(x), before.encode(x))
    train_audio_codec(corpus, b, cfg(2), progress=False)
    train_audio_codec(corpus, b, cfg(30), progress=False)  # resumes at step 2
    wa, wb = after.model.state_dict(), AudioTokenizer.load(b).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a codec with blocks: more can be added, none dropped, heads not regrouped, nothing else changed
    two = finetune_config(after.model.cfg, {"decoder_attention": 2})
    assert two.decoder_attention == 2 and finetune_model(a, two).cfg == two
    assert finetune_config(after.model.cfg, {}) == after.model.cfg
    with pytest.raises(ConfigError, match="not drop"):
        finetune_config(after.model.cfg, {"decoder_attention": 0})
    with pytest.raises(ConfigError, match="heads"):
        finetune_config(after.model.cfg, {"decoder_attention": 2, "decoder_attention_heads": 2})
    with pytest.raises(ConfigError, match="num_levels"):
        AudioCodecTrainConfig(finetune_decoder=base, model_overrides={"num_levels": 3})
    with pytest.raises(ConfigError, match="bad model override"):
        finetune_config(after.model.cfg, {"decoder_attention_heads": "4"})  # --model.decoder_attention_heads='"4"'
    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "tokenizer",
                "train-audio",
                "--manifest",
                corpus,
                "--out",
                out,
                "--finetune-decoder",
                base,
                "--model.decoder_attention=1",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--segment-frames",
                "8",
            ]
        )
        == 0
    )
    assert AudioTokenizer.load(out).model.cfg.decoder_attention == 1
