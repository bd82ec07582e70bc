import filecmp
import json
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from chameleon_lite.cli import main
from chameleon_lite.data import procedural as P
from chameleon_lite.data.checkers import compare_audio, compare_image, parse_audio_caption, parse_image_caption
from chameleon_lite.data.manifest import iter_documents, validate_manifest
from chameleon_lite.errors import ConfigError, DataError, UserError


def _same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)
    files = cmp.common_files
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    if cmp.left_only or cmp.right_only or mismatch or errors:
        return False
    return all(_same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    manifest = P.write_corpus(out, n=150, seed=3, progress=False)
    return str(out), manifest


# ------------------------------------------------------------------------------------------- config
def test_config_json_round_trip():
    cfg = P.CorpusConfig(
        image_size=96,
        sample_rate=22050,
        task_weights={"interleaved": 2.0, "caption_to_image": 1.0},
        interleaved_media=(3, 5),
    )
    back = P.CorpusConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_size": 16}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"sample_rate": 4000}, "sample_rate"),
        ({"task_weights": {"caption_to_video": 1.0}}, "unknown task"),
        ({"task_weights": {"interleaved": 0.0}}, "not all 0"),
        ({"task_weights": {"interleaved": -1.0}}, ">= 0"),
        ({"interleaved_media": (3, 2)}, "interleaved_media"),
        ({"instruction_media": (0, 2)}, "instruction_media"),
        ({"instruction_media": (1, 17)}, "instruction_media"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        P.CorpusConfig(**kwargs)


def test_config_from_dict_rejects_unknown_field():
    with pytest.raises(ConfigError, match="colour"):
        P.CorpusConfig.from_dict({"colour": 1})


# ------------------------------------------------------------------------------------------- specs
def test_image_specs_cover_every_attribute_and_never_share_a_cell():
    rng = np.random.default_rng(0)
    specs = [P.sample_image_spec(rng) for _ in range(600)]
    assert {len(s.shapes) for s in specs} == {1, 2}
    for s in specs:
        assert len({x.position for x in s.shapes}) == len(s.shapes)
    shapes = [x for s in specs for x in s.shapes]
    assert {x.kind for x in shapes} == set(P.SHAPE_KINDS) and len(P.SHAPE_KINDS) >= 4
    assert {x.color for x in shapes} == set(P.COLOR_NAMES) and len(P.COLOR_NAMES) >= 6
    assert {x.size for x in shapes} == {"small", "large"}
    assert {x.position for x in shapes} == set(P.POSITIONS) and len(P.POSITIONS) == 9


def test_audio_specs_within_limits():
    rng = np.random.default_rng(0)
    specs = [P.sample_audio_spec(rng) for _ in range(600)]
    assert {len(s.notes) for s in specs} == {1, 2, 3, 4}
    assert {s.timbre for s in specs} == set(P.TIMBRES)
    assert {n for s in specs for n in s.notes} == set(P.PITCHES) and len(P.PITCHES) >= 12
    for s in specs:
        assert all(0.2 <= d <= 0.4 for d in s.durations)
        assert 0.5 <= s.clip_seconds() <= 2.0


def test_palette_is_well_separated():
    rgb = np.asarray(list(P.COLORS.values()), float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert d[~np.eye(len(rgb), dtype=bool)].min() > 80
    assert np.linalg.norm(rgb - np.asarray(P.BACKGROUND), axis=1).min() > 150


def test_pitch_names():
    assert P.PITCHES[0] == "C4" and "D#4" in P.PITCHES and P.PITCHES[-1] == "C6"
    assert P.pitch_to_midi("A4") == 69 and P.pitch_frequency("A4") == pytest.approx(440.0)
    assert P.pitch_frequency("C5") == pytest.approx(523.2511, rel=1e-5)
    assert P.midi_to_pitch(10) == "C4" and P.midi_to_pitch(200) == "C6"


@pytest.mark.parametrize(
    "build",
    [
        lambda: P.Shape("hexagon", "red", "large", "center"),
        lambda: P.Shape("circle", "mauve", "large", "center"),
        lambda: P.Shape("circle", "red", "huge", "center"),
        lambda: P.Shape("circle", "red", "large", "upstairs"),
        lambda: P.ImageSpec(
            (P.Shape("circle", "red", "large", "center"), P.Shape("square", "blue", "small", "center"))
        ),
        lambda: P.AudioSpec(("H4",), "sine", (0.3,)),
        lambda: P.AudioSpec(("C4",), "triangle", (0.3,)),
        lambda: P.AudioSpec(("C4", "D4"), "sine", (0.3,)),
        lambda: P.AudioSpec(("C4",), "sine", (0.01,)),
    ],
)
def test_bad_specs_are_data_errors(build):
    with pytest.raises(DataError):
        build()


def test_meta_round_trip():
    rng = np.random.default_rng(5)
    ispec, aspec = P.sample_image_spec(rng), P.sample_audio_spec(rng)
    assert P.ImageSpec.from_meta(json.loads(json.dumps(ispec.to_meta(64, 64)))) == ispec
    assert P.AudioSpec.from_meta(json.loads(json.dumps(aspec.to_meta(16000)))) == aspec
    with pytest.raises(DataError):
        P.ImageSpec.from_meta({"type": "image"})
    with pytest.raises(DataError):
        P.AudioSpec.from_meta({"notes": ["C4"]})


# ------------------------------------------------------------------------------------------- rendering
def test_render_image_pixels():
    spec = P.ImageSpec(
        (P.Shape("square", "red", "large", "top left"), P.Shape("circle", "blue", "small", "bottom right"))
    )
    img = P.render_image(spec, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (img[0, 0] == P.BACKGROUND).all() and (img[32, 32] == P.BACKGROUND).all()
    r0, r1, c0, c1 = P.cell_box(0, 64, 64)
    assert tuple(img[(r0 + r1) // 2, (c0 + c1) // 2]) == P.COLORS["red"]
    r0, r1, c0, c1 = P.cell_box(8, 64, 64)
    assert tuple(img[(r0 + r1) // 2, (c0 + c1) // 2]) == P.COLORS["blue"]
    # anti-aliased: the circle's edge has pixels between background and color
    values = {tuple(p) for p in img[r0:r1, c0:c1].reshape(-1, 3)}
    assert len(values) > 2


@pytest.mark.parametrize("size", [32, 64, 100])
def test_every_shape_stays_inside_its_cell(size):
    maps = P.coverage_maps(size, size)
    assert maps.shape == (len(P.SHAPE_KINDS), len(P.SIZES), 9, size, size)
    for cell in range(9):
        r0, r1, c0, c1 = P.cell_box(cell, size, size)
        inside = maps[:, :, cell, r0:r1, c0:c1].sum(axis=(-2, -1))
        assert np.allclose(inside, maps[:, :, cell].sum(axis=(-2, -1)))
        assert (inside > 0).all()
    # large shapes are larger than small ones, every kind a different footprint
    area = maps.sum(axis=(-2, -1))
    assert (area[:, 1] > 2 * area[:, 0]).all()
    flat = maps[:, 1, 4].reshape(len(P.SHAPE_KINDS), -1)
    assert len({f.tobytes() for f in flat}) == len(P.SHAPE_KINDS)


def test_default_cells_are_whole_patches_of_the_image_tokenizer():
    """At the default side every grid cell is 2x2 patches of the tiny image tokenizer (factor 8), so a shape's
    pixels are the same in every cell up to a shift by whole patches: its codes cannot depend on its cell."""
    from chameleon_lite.tokenizers.image import preset

    side, factor = P.CorpusConfig().image_size, preset("tiny").factor
    assert preset("tiny").image_size == side and side % (3 * factor) == 0
    step = side // 3
    maps = P.coverage_maps(side, side)
    for cell in range(9):
        r, c = divmod(cell, 3)
        assert P.cell_box(cell, side, side) == (r * step, (r + 1) * step, c * step, (c + 1) * step)
        shifted = np.roll(maps[:, :, 0], (r * step, c * step), axis=(-2, -1))
        assert np.array_equal(maps[:, :, cell], shifted)


def test_notes_start_on_codec_frames():
    """Durations, gaps and the lead are whole 20 ms frames: every onset and every clip length is a multiple of
    the tiny codec's hop, and a note's samples depend only on its pitch, timbre and length."""
    from chameleon_lite.tokenizers.audio import preset

    sr, hop = 16000, preset("tiny").hop
    assert round(P.TIME_GRID * sr) == hop
    rng = np.random.default_rng(3)
    for _ in range(200):
        spec = P.sample_audio_spec(rng)
        assert all(round(d / P.TIME_GRID, 6).is_integer() for d in spec.durations)
        assert P.NOTE_DURATIONS[0] <= min(spec.durations) and max(spec.durations) <= P.NOTE_DURATIONS[1]
        samples = [o * sr for o in spec.onsets()] + [spec.clip_seconds() * sr]
        assert all(abs(x - round(x)) < 1e-6 and round(x) % hop == 0 for x in samples)
    a = P.synthesize_audio(P.AudioSpec(("E5", "A4"), "square", (0.3, 0.24)), sr)
    b = P.synthesize_audio(P.AudioSpec(("C4", "A4", "G5"), "square", (0.22, 0.24, 0.4)), sr)
    on_a, on_b = round(0.42 * sr), round(0.34 * sr)  # lead + first note + gap
    n = round(0.24 * sr)
    assert on_a % hop == 0 and on_b % hop == 0 and np.array_equal(a[on_a : on_a + n], b[on_b : on_b + n])


def test_synthesis_is_band_limited_and_pitched():
    sr = 16000
    spec = P.AudioSpec(("C6", "A4"), "sawtooth", (0.4, 0.3))
    wave = P.synthesize_audio(spec, sr)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == round(spec.clip_seconds() * sr)
    assert np.abs(wave).max() <= P.AMPLITUDE + 1e-6
    on = spec.onsets()
    gap = wave[int((on[0] + 0.4) * sr) + 2 : int(on[1] * sr) - 2]
    assert len(gap) > 0 and np.abs(gap).max() == 0.0
    note = wave[int((on[0] + 0.05) * sr) : int((on[0] + 0.35) * sr)].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(note * np.hanning(len(note))))
    freqs = np.fft.rfftfreq(len(note), 1 / sr)
    assert freqs[spectrum.argmax()] == pytest.approx(P.pitch_frequency("C6"), abs=5)
    assert spectrum[freqs > 0.46 * sr].max() < 1e-3 * spectrum.max()
    harmonics = dict(P.harmonic_amplitudes("square", 1000.0, sr))
    assert set(harmonics) == {1, 3, 5, 7} and harmonics[3] == pytest.approx(1 / 3)
    assert P.harmonic_amplitudes("sine", 1000.0, sr) == [(1, 1.0)]


def test_captions_and_prompts():
    ispec = P.ImageSpec((P.Shape("circle", "red", "large", "top left"), P.Shape("cross", "white", "small", "center")))
    phrase = "a large red circle at the top left and a small white cross at the center"
    for t in range(len(P.IMAGE_CAPTIONS)):
        cap = P.caption_image(ispec, t)
        assert phrase in cap.lower() and cap[0].isupper() and cap.endswith(".")
    assert P.image_prompt(ispec, 0) == "Draw " + phrase + "."
    aspec = P.AudioSpec(("C5", "E5", "G5"), "square", (0.3, 0.3, 0.3))
    assert P.audio_prompt(aspec, 0) == "Play C5 E5 G5 on a square wave."
    for t in range(len(P.AUDIO_CAPTIONS)):
        cap = P.caption_audio(aspec, t)
        assert "C5 E5 G5" in cap and "square wave" in cap
    one = P.AudioSpec(("A4",), "sine", (0.3,))
    assert P.caption_audio(one, 1) == "The note A4 on a sine wave."


# ------------------------------------------------------------------------------------------- corpus
def test_manifest_structure(corpus):
    out, manifest = corpus
    assert manifest == os.path.join(out, "manifest.jsonl")
    with open(os.path.join(out, "corpus.json")) as f:
        info = json.load(f)
    assert info["n"] == 150 and info["seed"] == 3 and P.CorpusConfig.from_dict(info["config"]) == P.CorpusConfig()
    with open(manifest) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 150 and len({r["id"] for r in records}) == 150
    tasks = {r["meta"]["task"] for r in records}
    assert tasks == set(P.TASKS)
    for r in records:
        assert set(r) == {"id", "segments", "meta"}
        segs = r["segments"]
        kinds = []
        task = r["meta"]["task"]
        for i, seg in enumerate(segs):
            kind = next(iter(seg))
            assert kind in ("text", "image", "audio")
            # only the media a caption describes is an input (bidirectional); everything else is plain
            as_input = task in ("image_to_caption", "audio_to_caption") and i == 0
            assert seg == ({kind: seg[kind], "attend": "bidirectional"} if as_input else {kind: seg[kind]})
            kinds.append(kind)
        media = [k for k in kinds if k != "text"]
        assert [m["type"] for m in r["meta"]["media"]] == media
        expected = {
            "caption_to_image": ["text", "image"],
            "image_to_caption": ["image", "text"],
            "caption_to_audio": ["text", "audio"],
            "audio_to_caption": ["audio", "text"],
        }
        if task in expected:
            assert kinds == expected[task]
        elif task == "instruction":
            assert 1 <= len(media) <= 3 and kinds == ["text"] + media
            for meta, item in zip(r["meta"]["media"], segs[0]["text"].split(", then ")):
                if meta["type"] == "image":
                    assert compare_image(parse_image_caption(item), P.ImageSpec.from_meta(meta)).exact, item
                else:
                    assert compare_audio(parse_audio_caption(item), P.AudioSpec.from_meta(meta)).exact, item
        else:
            assert 2 <= len(media) <= 4 and kinds[0::2] == ["text"] * len(media) and kinds[1::2] == media
    report = validate_manifest(manifest)
    assert report.ok, report.summary()


def test_bidirectional_inputs_can_be_switched_off(tmp_path):
    cfg = P.CorpusConfig(bidirectional_inputs=False, task_weights={"image_to_caption": 1.0, "audio_to_caption": 1.0})
    for i in range(6):
        doc = P.make_document(i, 0, cfg)
        assert all("attend" not in seg for seg in doc.record["segments"])
    doc = P.make_document(0, 0, P.CorpusConfig(task_weights={"image_to_caption": 1.0}))
    assert doc.record["segments"][0]["attend"] == "bidirectional"


def test_files_decode_and_match_meta(corpus):
    _, manifest = corpus
    seen = {"image": 0, "audio": 0}
    for doc in iter_documents(manifest):
        media = iter(doc.meta["media"])
        for seg in doc.segments:
            if seg.kind == "image":
                meta = next(media)
                with Image.open(seg.path) as im:
                    assert im.format == "PNG" and im.mode == "RGB" and im.size == (48, 48)
                    arr = np.asarray(im)
                assert (arr == P.render_image(P.ImageSpec.from_meta(meta), 48)).all()
                seen["image"] += 1
            elif seg.kind == "audio":
                meta = next(media)
                info = sf.info(seg.path)
                assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
                pcm, sr = sf.read(seg.path, dtype="int16")
                assert (pcm == P.to_pcm16(P.synthesize_audio(P.AudioSpec.from_meta(meta), sr))).all()
                assert 0.5 <= len(pcm) / sr <= 2.0
                seen["audio"] += 1
    assert seen["image"] > 20 and seen["audio"] > 20


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a, b, c, d = (tmp_path / x for x in "abcd")
    P.write_corpus(a, n=40, seed=11, progress=False)
    P.write_corpus(b, n=40, seed=11, progress=False)
    P.write_corpus(c, n=40, seed=11, progress=False, workers=2)
    P.write_corpus(d, n=40, seed=12, progress=False)
    assert _same_tree(str(a), str(b)) and _same_tree(str(a), str(c))
    assert (a / "manifest.jsonl").read_bytes() != (d / "manifest.jsonl").read_bytes()


def test_document_depends_only_on_seed_and_index():
    cfg = P.CorpusConfig()
    first = P.make_document(17, 4, cfg)
    again = P.make_document(17, 4, cfg)
    assert first.record == again.record
    assert P.make_document(18, 4, cfg).record != first.record


def test_config_is_honoured(tmp_path):
    cfg = P.CorpusConfig(image_size=48, sample_rate=22050, task_weights={"interleaved": 1.0}, interleaved_media=(3, 3))
    manifest = P.write_corpus(tmp_path, n=6, seed=0, config=cfg, progress=False)
    for doc in iter_documents(manifest):
        assert doc.meta["task"] == "interleaved" and len(doc.meta["media"]) == 3
        for seg in doc.segments:
            if seg.kind == "image":
                with Image.open(seg.path) as im:
                    assert im.size == (48, 48)
            elif seg.kind == "audio":
                assert sf.info(seg.path).samplerate == 22050


def test_write_corpus_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        P.write_corpus(tmp_path / "x", n=0, progress=False)
    with pytest.raises(ConfigError):
        P.write_corpus(tmp_path / "x", n=3, seed=-1, progress=False)
    with pytest.raises(ConfigError):
        P.write_corpus(tmp_path / "x", n=3, workers=0, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not a folder"):
        P.write_corpus(blocker, n=3, progress=False)


def test_cli_writes_the_corpus(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(["data", "procedural", "--out", str(out), "--n", "5", "--seed", "2", "--image-size", "32", "--quiet"]) == 0
    )
    assert "wrote 5 documents" in capsys.readouterr().out
    ref = tmp_path / "ref"
    P.write_corpus(ref, n=5, seed=2, config=P.CorpusConfig(image_size=32), progress=False)
    assert _same_tree(str(out), str(ref))
    two = tmp_path / "two"
    assert (
        main(
            [
                "data",
                "procedural",
                "--out",
                str(two),
                "--n",
                "5",
                "--seed",
                "2",
                "--image-size",
                "32",
                "--workers",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert _same_tree(str(two), str(ref))
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        main(["data", "procedural", "--out", str(tmp_path / "w0"), "--n", "5", "--workers", "0", "--quiet"])
    assert e.value.code == 2 and "--workers: must be >= 1" in capsys.readouterr().err


def test_cli_task_weights(tmp_path, capsys):
    out = tmp_path / "w"
    assert (
        main(
            [
                "data",
                "procedural",
                "--out",
                str(out),
                "--n",
                "12",
                "--task-weights",
                "caption_to_image=1, audio_to_caption=1,image_to_caption=0,caption_to_audio=0,interleaved=0,instruction=0",
                "--quiet",
            ]
        )
        == 0
    )
    tasks = {json.loads(line)["meta"]["task"] for line in open(out / "manifest.jsonl")}
    assert tasks == {"caption_to_image", "audio_to_caption"}
    assert json.load(open(out / "corpus.json"))["config"]["task_weights"]["interleaved"] == 0
    capsys.readouterr()
    for bad, words in (
        ("caption_to_image", "TASK=WEIGHT"),
        ("caption_to_image=x", "TASK=WEIGHT"),
        ("drawing=2", "unknown task"),
        ("caption_to_image=-1", "task_weights"),
    ):
        assert (
            main(["data", "procedural", "--out", str(tmp_path / "bad"), "--n", "2", "--task-weights", bad, "--quiet"])
            == 1
        )
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_cli_bad_size_is_one_line_error(tmp_path, capsys):
    assert main(["data", "procedural", "--out", str(tmp_path), "--n", "5", "--image-size", "8", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_size" in err
