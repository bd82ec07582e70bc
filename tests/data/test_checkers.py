import io

import numpy as np
import pytest
import soundfile as sf
import soxr
from PIL import Image, ImageFilter

from chameleon_lite.data import procedural as P
from chameleon_lite.data.checkers import (
    AudioAttributes,
    ImageAttributes,
    ShapeReading,
    check_audio,
    check_image,
    compare_audio,
    compare_image,
    parse_audio_caption,
    parse_image_caption,
)
from chameleon_lite.data.manifest import iter_documents
from chameleon_lite.errors import DataError


def _image_accuracy(n, seed, degrade=lambda x: x, size=64):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        spec = P.sample_image_spec(rng)
        hits += compare_image(check_image(degrade(P.render_image(spec, size))), spec).exact
    return hits / n


def _audio_accuracy(n, seed, degrade=lambda w, sr: (w, sr), sample_rate=16000):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        spec = P.sample_audio_spec(rng)
        wave, sr = degrade(P.synthesize_audio(spec, sample_rate), sample_rate)
        hits += compare_audio(check_audio(wave, sr), spec).exact
    return hits / n


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


# ------------------------------------------------------------------------------------------- exactness
def test_images_exact_on_clean_samples():
    assert _image_accuracy(400, seed=100) == 1.0


def test_audio_exact_on_clean_samples():
    assert _audio_accuracy(250, seed=100) == 1.0


@pytest.mark.parametrize("size", [32, 48, 96, 200])
def test_images_exact_at_other_sizes(size):
    assert _image_accuracy(60, seed=size, size=size) == 1.0


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_audio_exact_at_other_sample_rates(rate):
    assert _audio_accuracy(40, seed=rate, sample_rate=rate) == 1.0


def test_corpus_files_read_back_exactly(tmp_path):
    manifest = P.write_corpus(tmp_path, n=60, seed=9, progress=False)
    checked = 0
    for doc in iter_documents(manifest):
        media = iter(doc.meta["media"])
        for seg in doc.segments:
            if seg.kind == "image":
                assert compare_image(check_image(seg.path), next(media)).exact
                checked += 1
            elif seg.kind == "audio":
                assert compare_audio(check_audio(seg.path), next(media)).exact
                checked += 1
    assert checked > 40


def test_image_input_forms_agree():
    spec = P.ImageSpec(
        (P.Shape("triangle", "purple", "large", "middle right"), P.Shape("cross", "orange", "small", "top left"))
    )
    img = P.render_image(spec, 64)
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    for form in (img, Image.fromarray(img), rgba, np.moveaxis(img, -1, 0), img.astype(np.float32) / 255.0):
        reading = check_image(form)
        assert compare_image(reading, spec).exact
        assert all(s.score > 0.95 for s in reading.shapes)
    assert [s.position for s in check_image(img).shapes] == ["top left", "middle right"]  # grid order


def test_audio_input_forms_agree():
    spec = P.AudioSpec(("C5", "E5", "G5"), "square", (0.3, 0.25, 0.35))
    wave = P.synthesize_audio(spec, 16000)
    pcm = P.to_pcm16(wave)
    stereo = np.stack([wave, wave], axis=1)
    for audio, rate in (
        (wave, 16000),
        (pcm, 16000),
        (stereo, 16000),
        (stereo.T, 16000),
        (soxr.resample(wave, 16000, 48000), 48000),
    ):
        reading = check_audio(audio, rate)
        assert compare_audio(reading, spec).exact
    reading = check_audio(wave, 16000)
    assert np.allclose(reading.onsets, spec.onsets(), atol=0.02)
    assert np.allclose(reading.durations, spec.durations, atol=0.06)


def test_notes_without_gaps_are_split_by_pitch():
    sr = 16000
    t = np.arange(int(0.3 * sr)) / sr
    legato = np.concatenate([0.4 * np.sin(2 * np.pi * P.pitch_frequency(p) * t) for p in ("C4", "E4", "E5")])
    reading = check_audio(legato, sr)
    assert reading.notes == ("C4", "E4", "E5") and reading.timbre == "sine"


# ------------------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize(
    "name, degrade, floor",
    [
        ("blur 1px", lambda x: Image.fromarray(x).filter(ImageFilter.GaussianBlur(1)), 0.95),
        (
            "noise 20",
            lambda x: np.clip(x + np.random.default_rng(0).normal(0, 20, x.shape), 0, 255).astype(np.uint8),
            0.95,
        ),
        (
            "down 32, up 64",
            lambda x: Image.fromarray(x).resize((32, 32), Image.BILINEAR).resize((64, 64), Image.BILINEAR),
            0.95,
        ),
        (
            "down 16, up 64",
            lambda x: Image.fromarray(x).resize((16, 16), Image.BILINEAR).resize((64, 64), Image.BILINEAR),
            0.9,
        ),
        ("up 128", lambda x: Image.fromarray(x).resize((128, 128), Image.BICUBIC), 0.95),
        ("faded to 70%", lambda x: (x * 0.7).astype(np.uint8), 0.95),
        ("background 30 brighter", lambda x: np.clip(x.astype(int) + 30, 0, 255).astype(np.uint8), 0.95),
        ("jpeg 75", lambda x: _jpeg(x, 75), 0.85),
        ("shift 2px", lambda x: np.roll(x, (2, -2), axis=(0, 1)), 0.95),
    ],
)
def test_images_robust_to_degradation(name, degrade, floor):
    assert _image_accuracy(100, seed=7, degrade=degrade) >= floor


@pytest.mark.parametrize(
    "name, degrade, floor",
    [
        ("noise 0.05", lambda w, sr: (w + np.random.default_rng(0).normal(0, 0.05, w.shape), sr), 0.95),
        ("resampled to 8 kHz", lambda w, sr: (soxr.resample(w, sr, 8000), 8000), 0.95),
        ("8-bit", lambda w, sr: (np.round(w * 127) / 127, sr), 0.95),
        ("quiet", lambda w, sr: (w * 0.05, sr), 0.95),
    ],
)
def test_audio_robust_to_degradation(name, degrade, floor):
    assert _audio_accuracy(60, seed=7, degrade=degrade) >= floor


def test_empty_and_degenerate_images():
    assert check_image(np.zeros((64, 64, 3), np.uint8)).shapes == ()
    assert check_image(np.zeros((0, 0, 3), np.uint8)).shapes == ()
    assert check_image(np.zeros((1, 1), np.uint8)).shapes == ()
    assert check_image(np.full((64, 64, 3), np.nan, np.float32)).shapes == ()
    for shape in ((2, 500, 3), (1000, 3, 3), (40, 2000, 3)):
        assert check_image(np.zeros(shape, np.uint8)).shapes == ()
    small = check_image(
        np.asarray(
            Image.fromarray(P.render_image(P.ImageSpec((P.Shape("square", "blue", "large", "center"),)), 64)).resize(
                (20, 20), Image.BILINEAR
            )
        )
    )
    assert [(s.color, s.position) for s in small.shapes] == [("blue", "center")]


def test_random_noise_images_give_a_valid_best_guess():
    rng = np.random.default_rng(1)
    for img in (
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        rng.random((40, 90, 3)),
        np.full((64, 64, 3), 255, np.uint8),
        rng.integers(0, 256, (17, 5), dtype=np.uint8),
    ):
        reading = check_image(img)
        assert len(reading.shapes) <= 9
        for s in reading.shapes:
            assert s.kind in P.SHAPE_KINDS and s.color in P.COLORS and s.size in P.SIZES and s.position in P.POSITIONS
            assert 0.0 <= s.score <= 1.0


def test_silence_noise_and_degenerate_audio():
    rng = np.random.default_rng(2)
    for audio in (
        np.zeros(16000),
        np.zeros(0),
        np.zeros(10),
        np.full(16000, 0.5),
        np.full(8000, np.nan),
        rng.normal(0, 0.3, 16000),
        rng.normal(0, 0.3, (2, 16000)),
    ):
        reading = check_audio(audio, 16000)
        assert reading.notes == () and reading.timbre is None
    weird = check_audio(rng.uniform(-1, 1, 16000) * np.sin(np.linspace(0, 40, 16000)) ** 8, 16000)
    assert all(n in P.PITCHES for n in weird.notes) and weird.timbre in (None, *P.TIMBRES)


def test_bad_inputs_are_data_errors(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.png"):
        check_image(str(junk))
    with pytest.raises(DataError, match="missing.png"):
        check_image(tmp_path / "missing.png")
    with pytest.raises(DataError):
        check_image(np.zeros((2, 64, 64, 3)))
    with pytest.raises(DataError):
        check_image(np.array(["a", "b"]))
    wav = tmp_path / "junk.wav"
    wav.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(DataError, match="junk.wav"):
        check_audio(str(wav))
    with pytest.raises(DataError):
        check_audio(np.zeros((2, 2, 2)), 16000)
    with pytest.raises(DataError, match="sample_rate"):
        check_audio(np.zeros(100), 0)


def test_reads_a_wav_at_its_own_rate(tmp_path):
    spec = P.AudioSpec(("A4", "A4"), "sawtooth", (0.3, 0.3))
    path = tmp_path / "clip.wav"
    sf.write(path, P.synthesize_audio(spec, 11025), 11025, subtype="PCM_16")
    assert compare_audio(check_audio(str(path)), spec).exact


# ------------------------------------------------------------------------------------------- comparison
def _spec():
    return P.ImageSpec((P.Shape("circle", "red", "large", "top left"), P.Shape("square", "blue", "small", "center")))


def _reading(*shapes):
    return ImageAttributes(tuple(ShapeReading(*s) for s in shapes))


def test_compare_image_per_attribute():
    spec = _spec()
    right = compare_image(_reading(("circle", "red", "large", "top left"), ("square", "blue", "small", "center")), spec)
    assert right.exact and all(right.attributes.values())
    swapped = compare_image(
        _reading(("circle", "blue", "large", "top left"), ("square", "red", "small", "center")), spec
    )
    assert not swapped.exact and swapped.attributes == {
        "count": True,
        "kind": True,
        "color": True,
        "size": True,
        "position": True,
    }
    wrong_color = compare_image(
        _reading(("circle", "green", "large", "top left"), ("square", "blue", "small", "center")), spec
    )
    assert not wrong_color.exact and not wrong_color.attributes["color"]
    assert {k for k, v in wrong_color.attributes.items() if not v} == {"color"}
    moved = compare_image(
        _reading(("circle", "red", "large", "top right"), ("square", "blue", "small", "center")), spec
    )
    assert {k for k, v in moved.attributes.items() if not v} == {"position"}
    missing = compare_image(_reading(("circle", "red", "large", "top left")), spec)
    assert not missing.exact and not missing.attributes["count"]
    assert compare_image(_reading(), P.ImageSpec(())).exact
    assert compare_image(spec, spec.to_meta(64, 64)).exact  # a manifest meta record works as the truth


def test_compare_audio_per_attribute():
    spec = P.AudioSpec(("C5", "E5", "G5"), "square", (0.3, 0.3, 0.3))
    meta = spec.to_meta(16000)
    assert compare_audio(AudioAttributes(("C5", "E5", "G5"), "square"), meta).exact
    reordered = compare_audio(AudioAttributes(("E5", "C5", "G5"), "square"), spec)
    assert not reordered.exact and reordered.attributes == {
        "count": True,
        "notes": False,
        "pitch_set": True,
        "timbre": True,
        "first_note": False,
    }
    timbre = compare_audio(AudioAttributes(("C5", "E5", "G5"), "sine"), spec)
    assert not timbre.exact and {k for k, v in timbre.attributes.items() if not v} == {"timbre"}
    short = compare_audio(AudioAttributes(("C5", "E5"), "square"), spec)
    assert not short.attributes["count"] and not short.attributes["pitch_set"] and short.attributes["first_note"]
    assert not compare_audio(AudioAttributes((), None), spec).exact
    with pytest.raises(DataError):
        compare_audio("C5 E5 G5", spec)


# ------------------------------------------------------------------------------------------- captions
def test_caption_parsers_read_every_template():
    rng = np.random.default_rng(3)
    for _ in range(50):
        ispec, aspec = P.sample_image_spec(rng), P.sample_audio_spec(rng)
        texts = [P.caption_image(ispec, t) for t in range(len(P.IMAGE_CAPTIONS))]
        texts += [P.image_prompt(ispec, t) for t in range(len(P.IMAGE_PROMPTS))]
        texts.append(P.interleaved_text(ispec, first=False))
        for text in texts:
            assert compare_image(parse_image_caption(text), ispec).exact, text
        texts = [P.caption_audio(aspec, t) for t in range(len(P.AUDIO_CAPTIONS))]
        texts += [P.audio_prompt(aspec, t) for t in range(len(P.AUDIO_PROMPTS))]
        texts.append(P.interleaved_text(aspec, first=True))
        for text in texts:
            assert compare_audio(parse_audio_caption(text), aspec).exact, text


def test_caption_parsers_on_free_text():
    reading = parse_audio_caption("play C5 E5 G5 on a square wave")
    assert reading.notes == ("C5", "E5", "G5") and reading.timbre == "square"
    assert parse_audio_caption("nothing musical, H2O and C#9").notes == ()
    assert parse_audio_caption("C#4 then Db4").notes == ("C#4",)
    assert parse_image_caption("A dog on a sofa.").shapes == ()
    got = parse_image_caption("Here is a Small Yellow Diamond in the bottom right, and a blob.")
    assert [s.as_shape() for s in got.shapes] == [P.Shape("diamond", "yellow", "small", "bottom right")]
