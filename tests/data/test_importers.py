"""The importers (issue 34): MNIST IDX, labelled clips, captions files, WebDataset shards. Each writes a manifest that
``data validate`` passes; each bad input is one clear line and exit 1, and leaves --out as it was.

Fixtures are made here (a few pixels, a few milliseconds of audio); the real AV-MNIST files in
../shared/data/avmnist are read where they lie when present."""

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from chameleon_lite.cli import main
from chameleon_lite.data.importers import compile_pattern, read_idx

AVMNIST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "avmnist")
MNIST_IMAGES = os.path.join(AVMNIST, "mnist", "t10k-first8000-images-idx3-ubyte.gz")
MNIST_LABELS = os.path.join(AVMNIST, "mnist", "t10k-first8000-labels-idx1-ubyte.gz")
FSDD = os.path.join(AVMNIST, "fsdd", "recordings")
PIXELS = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4  # 3 pictures of 4 x 5


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*argv, "--quiet"] if argv[1].startswith("import") else list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def fails(capsys, *argv) -> str:
    """Run an import that must fail: exit 1, one line on stderr, no traceback; returns the line."""
    rc, _, err = cli(capsys, *argv)
    assert rc == 1, err
    assert err.count("\n") == 1 and err.startswith("chameleon-lite: error:") and "Traceback" not in err, err
    return err


def validates(capsys, manifest) -> None:
    rc, out, _ = cli(capsys, "data", "validate", str(manifest), "--quiet")
    assert rc == 0 and "no errors" in out, out


def records(out) -> list[dict]:
    with open(os.path.join(out, "manifest.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------- fixtures
def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return head + arr.tobytes()


def write_idx(path, arr, gz=True) -> str:
    data = idx_bytes(np.asarray(arr))
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


@pytest.fixture
def mnist(tmp_path):
    return (
        write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", PIXELS),
        write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 2, 1], np.uint8)),
    )


def wav(path, seconds=0.05, rate=8000) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="PCM_16")
    return str(path)


def png(path, value=128, size=(6, 4)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return str(path)


def png_bytes(value=128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (6, 4), value).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(400, np.float32), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def recordings(tmp_path):
    folder = tmp_path / "recordings"
    for name in ("0_george_0.wav", "7_theo_12.wav", "7_jackson_3.wav"):
        wav(folder / name)
    (folder / "README.txt").write_text("not audio: ignored")
    return str(folder)


def write_shard(path, samples) -> str:
    import webdataset as wds

    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    return str(path)


@pytest.fixture
def shard(tmp_path):
    return write_shard(
        tmp_path / "shard-000.tar",
        [
            {"__key__": "a/0001", "png": png_bytes(10), "txt": "a dark square", "cls": 3},
            {"__key__": "a/0002", "jpg": _jpeg(), "json": {"caption": "a grey box", "url": "x"}},
            {"__key__": "a/0003", "wav": wav_bytes(), "txt": "silence"},
        ],
    )


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- MNIST
def test_mnist_writes_grayscale_pngs_and_a_manifest_that_validates(mnist, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = cli(capsys, "data", "import-mnist", *mnist, "--out", str(out))
    assert rc == 0 and "imported 3 documents" in stdout
    recs = records(out)
    assert [r["meta"]["label"] for r in recs] == [7, 2, 1]
    assert recs[0]["segments"] == [{"text": "a handwritten seven (7)"}, {"image": "images/00000.png"}]
    assert recs[0]["meta"]["split"] == "test" and recs[2]["meta"]["index"] == 2
    for i, r in enumerate(recs):
        with Image.open(out / r["segments"][1]["image"]) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), PIXELS[i])
    assert json.loads((out / "import.json").read_text())["documents"] == 3
    validates(capsys, out / "manifest.jsonl")


def test_mnist_raw_idx_label_names_caption_template_and_order(tmp_path, capsys):
    images = write_idx(tmp_path / "imgs.idx", PIXELS, gz=False)
    labels = write_idx(tmp_path / "labels.idx", np.array([0, 1, 0], np.uint8), gz=False)
    out = tmp_path / "out"
    argv = ["--label-names", "shirt,shoe", "--text", "{word} #{index}", "--order", "media-first", "--limit", "2"]
    rc, _, _ = cli(capsys, "data", "import-mnist", images, labels, "--out", str(out), *argv)
    assert rc == 0
    recs = records(out)
    assert len(recs) == 2 and "split" not in recs[0]["meta"]
    assert recs[1]["segments"] == [{"image": "images/00001.png", "attend": "bidirectional"}, {"text": "shoe #1"}]
    rc, _, _ = cli(capsys, "data", "import-mnist", images, labels, "--out", str(out), "--text", "")
    assert rc == 0 and records(out)[0]["segments"] == [{"image": "images/00000.png"}]


@pytest.mark.skipif(not os.path.exists(MNIST_IMAGES), reason="the AV-MNIST data (../shared/data/avmnist) is not here")
def test_mnist_real_files(tmp_path, capsys):
    out = tmp_path / "mnist"
    rc, _, _ = cli(capsys, "data", "import-mnist", MNIST_IMAGES, MNIST_LABELS, "--out", str(out), "--limit", "300")
    assert rc == 0
    recs = records(out)
    assert len(recs) == 300 and {r["meta"]["label"] for r in recs} == set(range(10))
    with Image.open(out / "images" / "00000.png") as im:
        assert im.size == (28, 28) and im.mode == "L"
    validates(capsys, out / "manifest.jsonl")
    assert read_idx(MNIST_LABELS).shape == (8000,)


def _truncated(tmp_path):
    data = gzip.compress(idx_bytes(PIXELS)[:-7])
    (tmp_path / "i.gz").write_bytes(data)
    return str(tmp_path / "i.gz")


def _corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(idx_bytes(PIXELS)))
    data[12:20] = b"\xff" * 8
    (tmp_path / "i.gz").write_bytes(bytes(data))
    return str(tmp_path / "i.gz")


def _trailing(tmp_path):
    (tmp_path / "i.idx").write_bytes(idx_bytes(PIXELS) + b"\0\0")
    return str(tmp_path / "i.idx")


def _not_idx(tmp_path):
    (tmp_path / "i.idx").write_text("P5 this is text\n")
    return str(tmp_path / "i.idx")


@pytest.mark.parametrize(
    "make_images,message",
    [
        (lambda p: str(p / "missing.gz"), "missing.gz: an IDX images file not found"),
        (_truncated, "truncated: its header promises (3, 4, 5) values (60 bytes), it holds 53"),
        (_corrupt_gzip, "i.gz: corrupt gzip stream"),
        (_trailing, "holds more data than its header (3, 4, 5) describes"),
        (_not_idx, "i.idx: not an IDX file"),
        (lambda p: write_idx(p / "i.gz", np.zeros((4, 2, 2), np.uint8)), "holds 4 images but"),
        (lambda p: write_idx(p / "i.gz", np.zeros(3, np.uint8)), "expected IDX images"),
        (lambda p: write_idx(p / "i.gz", np.zeros((3, 2, 2), ">i4")), "expected IDX images"),
    ],
    ids=[
        "missing",
        "truncated",
        "corrupt gzip",
        "trailing data",
        "not IDX",
        "count mismatch",
        "labels as images",
        "int32",
    ],
)
def test_mnist_bad_images_file(make_images, message, mnist, tmp_path, capsys):
    err = fails(capsys, "data", "import-mnist", make_images(tmp_path), mnist[1], "--out", str(tmp_path / "out"))
    assert message in err
    assert not os.path.exists(tmp_path / "out") and not [n for n in os.listdir(tmp_path) if ".import-" in n]


def test_mnist_bad_labels_and_flags(mnist, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "expected IDX labels" in fails(capsys, "data", "import-mnist", mnist[0], mnist[0], "--out", out)
    short = ["--label-names", "a,b,c"]
    assert "label 7 has no name: --label-names lists 3" in fails(
        capsys, "data", "import-mnist", *mnist, "--out", out, *short
    )
    err = fails(capsys, "data", "import-mnist", *mnist, "--out", out, "--text", "{colour}")
    assert "--text '{colour}' uses {colour}; the fields are index, label, word" in err
    assert "--text '{'" in fails(capsys, "data", "import-mnist", *mnist, "--out", out, "--text", "{")


# ---------------------------------------------------------------------------------------------- labelled clips
def test_labelled_audio_fields_go_to_meta_and_the_clips_stay_where_they_lie(recordings, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, _ = cli(capsys, "data", "import-labelled-audio", recordings, "--out", str(out))
    assert rc == 0
    recs = records(out)
    assert [r["id"] for r in recs] == ["0_george_0.wav", "7_jackson_3.wav", "7_theo_12.wav"]
    path = os.path.join(recordings, "7_theo_12.wav")
    assert recs[2]["meta"] == {"label": 7, "speaker": "theo", "index": 12, "source": path}
    assert recs[2]["segments"] == [{"text": "a spoken seven (7)"}, {"audio": path}]
    assert not os.path.exists(out / "audio")  # nothing copied
    validates(capsys, out / "manifest.jsonl")


def test_labelled_audio_regex_subfolders_and_text(tmp_path, capsys):
    folder = tmp_path / "speech"
    wav(folder / "yes" / "abc_nohash_0.wav")
    wav(folder / "no" / "def_nohash_1.wav")
    out = tmp_path / "out"
    pattern = r"(?P<label>\w+)/(?P<speaker>\w+)_nohash_(?P<take>\d+)\.wav"
    rc, _, _ = cli(
        capsys,
        "data",
        "import-labelled-audio",
        str(folder),
        "--pattern",
        pattern,
        "--text",
        "{speaker} says {word}",
        "--out",
        str(out),
    )
    assert rc == 0
    assert [(r["meta"]["label"], r["meta"]["take"], r["segments"][0]["text"]) for r in records(out)] == [
        ("no", 1, "def says no"),
        ("yes", 0, "abc says yes"),
    ]


def test_template_pattern_matches_fsdd_names():
    rx = compile_pattern("{label}_{speaker}_{index}.wav")
    assert rx.fullmatch("7_george_10.wav").groupdict() == {"label": "7", "speaker": "george", "index": "10"}
    assert rx.fullmatch("7_george_10.flac") is None and rx.fullmatch("sub/7_george_10.wav") is None


def test_labelled_audio_skip_unmatched(recordings, tmp_path, capsys):
    wav(tmp_path / "recordings" / "bad-name.wav")
    out = tmp_path / "out"
    rc, _, _ = cli(capsys, "data", "import-labelled-audio", recordings, "--out", str(out), "--skip-unmatched")
    assert rc == 0 and len(records(out)) == 3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--pattern", "{digit}_{speaker}.wav"], "has no {label} field"),
        (["--pattern", "{label}_{label}.wav"], "must be a name used once"),
        (["--pattern", "{label}_{speaker.wav"], "unbalanced brace"),
        (["--pattern", "(?P<label>[0-9]+"], "not a valid regex"),
        (["--pattern", "{label}.flac"], "none of its 3 audio files matches --pattern '{label}.flac'"),
        (["--text", "{word} by {who}"], "uses {who}; the fields are index, label, speaker, word"),
    ],
    ids=["no label", "field twice", "brace", "bad regex", "matches no file", "text field"],
)
def test_labelled_audio_bad_pattern_or_text(argv, message, recordings, tmp_path, capsys):
    err = fails(capsys, "data", "import-labelled-audio", recordings, "--out", str(tmp_path / "out"), *argv)
    assert message in err


def test_labelled_audio_bad_files(recordings, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "folder not found" in fails(capsys, "data", "import-labelled-audio", str(tmp_path / "nope"), "--out", out)
    png(tmp_path / "pics" / "1_a_1.png")
    assert "holds no audio files" in fails(
        capsys, "data", "import-labelled-audio", str(tmp_path / "pics"), "--out", out
    )
    wav(tmp_path / "recordings" / "hello.wav")
    err = fails(capsys, "data", "import-labelled-audio", recordings, "--out", out)
    assert (
        "hello.wav: does not match --pattern '{label}_{speaker}_{index}.wav' (1 such file(s); --skip-unmatched" in err
    )
    os.remove(tmp_path / "recordings" / "hello.wav")
    (tmp_path / "recordings" / "3_theo_1.wav").write_bytes(b"RIFF not really a wav file")
    err = fails(capsys, "data", "import-labelled-audio", recordings, "--out", out)
    assert "3_theo_1.wav: not a readable audio file" in err
    assert not os.path.exists(out)
    rc, stdout, _ = cli(capsys, "data", "import-labelled-audio", recordings, "--out", out, "--skip-bad")
    assert rc == 0 and "skipped 1 unusable item(s)" in stdout and len(records(out)) == 3


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="the AV-MNIST data (../shared/data/avmnist) is not here")
def test_fsdd_real_recordings(tmp_path, capsys):
    out = tmp_path / "fsdd"
    rc, _, _ = cli(capsys, "data", "import-labelled-audio", FSDD, "--out", str(out))
    assert rc == 0
    recs = records(out)
    assert len(recs) == 2500
    assert {r["meta"]["speaker"] for r in recs} == {"george", "jackson", "lucas", "nicolas", "theo"}
    assert {r["meta"]["label"] for r in recs} == set(range(10)) and {r["meta"]["index"] for r in recs} == set(range(50))
    rc, out_text, _ = cli(capsys, "data", "validate", str(out / "manifest.jsonl"), "--quiet", "--no-media")
    assert rc == 0 and "2500 valid" in out_text


# ---------------------------------------------------------------------------------------------- captions
def test_captions_jsonl_of_pictures(tmp_path, capsys):
    pics = tmp_path / "pics"
    png(pics / "a.png")
    png(pics / "sub" / "b.jpg", 30)
    lines = [
        {"image": "a.png", "caption": "a grey picture", "author": "me"},
        {"image": "sub/b.jpg", "caption": "a dark one"},
        {"image": "a.png", "caption": "the same grey picture again"},
    ]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    out = tmp_path / "out"
    rc, _, _ = cli(
        capsys, "data", "import-captions", str(tmp_path / "caps.jsonl"), "--media", str(pics), "--out", str(out)
    )
    assert rc == 0
    recs = records(out)
    assert [r["id"] for r in recs] == ["a.png", "sub/b.jpg", "a.png#2"]
    assert recs[0]["segments"] == [{"text": "a grey picture"}, {"image": str(pics / "a.png")}]
    assert recs[0]["meta"] == {"author": "me", "source": str(pics / "a.png"), "line": 1}
    validates(capsys, out / "manifest.jsonl")


def test_captions_csv_and_tsv_of_clips(tmp_path, capsys):
    wav(tmp_path / "clips" / "one.wav")
    wav(tmp_path / "clips" / "two.flac")
    (tmp_path / "clips" / "transcripts.csv").write_text(
        'path,transcript,speaker\none.wav,"hello, world",ann\ntwo.flac,bye,bob\n'
    )
    out = tmp_path / "out"
    rc, _, _ = cli(
        capsys,
        "data",
        "import-captions",
        str(tmp_path / "clips" / "transcripts.csv"),
        "--out",
        str(out),
        "--order",
        "media-first",
    )
    assert rc == 0
    recs = records(out)
    one = str(tmp_path / "clips" / "one.wav")
    assert recs[0]["segments"] == [{"audio": one, "attend": "bidirectional"}, {"text": "hello, world"}]
    assert recs[1]["meta"]["speaker"] == "bob"
    validates(capsys, out / "manifest.jsonl")
    (tmp_path / "clips" / "t.tsv").write_text("clip\tsays\none.wav\thi\n")
    tsv = str(tmp_path / "clips" / "t.tsv")
    rc, _, _ = cli(capsys, "data", "import-captions", tsv, "--text-column", "says", "--out", str(out))
    assert rc == 0 and records(out)[0]["segments"][0] == {"text": "hi"}


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("c.jsonl", '{"file": "a.png", "text": "ok"}\n{"file": "a.png", "text": \n', "c.jsonl:2: malformed JSON"),
        ("c.jsonl", '["a.png", "text"]\n', "c.jsonl:1: expected a JSON object, got list"),
        ("c.jsonl", '{"file": "a.png", "words": "x"}\n', "c.jsonl:1: none of text, caption, transcript"),
        ("c.jsonl", '{"file": "a.png", "text": ""}\n', "c.jsonl:1: 'text' must be non-empty text"),
        ("c.jsonl", '{"file": 3, "text": "x"}\n', "c.jsonl:1: 'file' must be a non-empty file path"),
        ("c.csv", "file,text\na.png,one\na.png,two,three\n", "c.csv:3: 3 field(s), the header names 2"),
        ("c.csv", 'file,text\na.png,"unclosed\n', "c.csv:2: malformed CSV"),
        ("c.csv", "name,text\na.png,one\n", "c.csv:1: none of file, path, filename"),
        ("c.csv", "file,text\nmissing.png,gone\n", "c.csv:2: " + "{media}/missing.png: image file not found"),
        ("c.csv", "file,text\nnotes.txt,what\n", "c.csv:2: notes.txt: cannot tell an image from a clip"),
        ("c.csv", "file,text\nbroken.png,bad\n", "c.csv:2: {media}/broken.png: cannot read image header"),
        ("c.csv", "", "c.csv: holds no captions"),
        ("c.txt", "a.png\tx\n", "c.txt: a captions file must be .jsonl, .csv or .tsv"),
    ],
    ids=[
        "bad JSON line",
        "not an object",
        "no text key",
        "empty text",
        "file not a string",
        "CSV field count",
        "CSV quote",
        "CSV no file column",
        "missing file",
        "unknown extension",
        "corrupt picture",
        "empty",
        "extension",
    ],
)
def test_bad_captions(name, content, message, tmp_path, capsys):
    media = tmp_path / "media"
    png(media / "a.png")
    (media / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / name).write_text(content)
    err = fails(
        capsys, "data", "import-captions", str(tmp_path / name), "--media", str(media), "--out", str(tmp_path / "o")
    )
    assert message.format(media=media) in err


def test_captions_file_missing_not_utf8_and_media_folder(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert "captions file not found" in fails(capsys, "data", "import-captions", str(tmp_path / "no.csv"), "--out", out)
    (tmp_path / "c.csv").write_bytes(b"file,text\na.png,\xff\xfe\n")
    assert "c.csv: not UTF-8 text" in fails(capsys, "data", "import-captions", str(tmp_path / "c.csv"), "--out", out)
    (tmp_path / "d.csv").write_text("file,text\na.png,x\n")
    err = fails(
        capsys, "data", "import-captions", str(tmp_path / "d.csv"), "--media", str(tmp_path / "x"), "--out", out
    )
    assert "media folder not found" in err


# ---------------------------------------------------------------------------------------------- WebDataset
def test_webdataset_shard_of_pictures_and_clips(shard, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, _ = cli(capsys, "data", "import-webdataset", shard, "--out", str(out))
    assert rc == 0
    recs = records(out)
    assert [r["id"] for r in recs] == ["a/0001", "a/0002", "a/0003"]
    assert recs[0]["segments"] == [{"text": "a dark square"}, {"image": "images/0000000.png"}]
    assert recs[0]["meta"]["cls"] == 3 and recs[0]["meta"]["shard"] == shard
    assert recs[1]["segments"][0] == {"text": "a grey box"} and recs[1]["meta"]["json"]["url"] == "x"
    assert recs[2]["segments"][1] == {"audio": "audio/0000002.wav"}
    assert sorted(os.listdir(out)) == ["audio", "images", "import.json", "manifest.jsonl"]
    validates(capsys, out / "manifest.jsonl")


def test_webdataset_brace_pattern_folder_and_limit(shard, tmp_path, capsys):
    write_shard(tmp_path / "shard-001.tar", [{"__key__": "b/0001", "png": png_bytes(), "txt": "more"}])
    out = tmp_path / "out"
    rc, _, _ = cli(capsys, "data", "import-webdataset", str(tmp_path / "shard-{000..001}.tar"), "--out", str(out))
    assert rc == 0 and [r["id"] for r in records(out)] == ["a/0001", "a/0002", "a/0003", "b/0001"]
    rc, _, _ = cli(capsys, "data", "import-webdataset", str(tmp_path), "--out", str(out), "--limit", "2")
    assert rc == 0 and len(records(out)) == 2 and os.listdir(out / "images") == ["0000000.png", "0000001.jpg"]


def test_webdataset_text_key_and_samples_without_text(tmp_path, capsys):
    path = write_shard(
        tmp_path / "s.tar",
        [{"__key__": "k1", "png": png_bytes(), "label.txt": "cat"}, {"__key__": "k2", "png": png_bytes()}],
    )
    out = tmp_path / "out"
    assert "s.tar: sample k1: no text part" in fails(capsys, "data", "import-webdataset", path, "--out", str(out))
    rc, _, _ = cli(
        capsys, "data", "import-webdataset", path, "--out", str(out), "--text-key", "label.txt", "--skip-bad"
    )
    assert rc == 0 and [r["segments"][0] for r in records(out)] == [{"text": "cat"}]
    rc, _, _ = cli(capsys, "data", "import-webdataset", path, "--out", str(out), "--allow-no-text")
    assert rc == 0 and records(out)[1]["segments"] == [{"image": "images/0000001.png"}]


def _truncated_tar(tmp_path, shard):
    with open(shard, "rb") as f:
        data = f.read()
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2 + 100])
    return str(tmp_path / "t.tar")


def _text_as_tar(tmp_path, shard):
    (tmp_path / "t.tar").write_text("this is not a tar archive at all\n" * 40)
    return str(tmp_path / "t.tar")


def _corrupt_compressed(suffix: str, compress):
    """A shard compressed as ``suffix`` whose compressed stream turns to garbage after its header (the decompressor
    fails before a sample is complete, not the tar reader)."""

    def make(tmp_path, shard):
        with open(shard, "rb") as f:
            data = compress(f.read())
        path = tmp_path / f"t.tar.{suffix}"
        path.write_bytes(data[:24] + b"\x00garbage" * 20)
        return str(path)

    return make


def _cut_at_member(suffix: str, compress):
    """The shard cut exactly before a member's header (sample a/0003), then compressed as ``suffix``: Python's tar
    reader takes the missing header for the end of the archive and would import the first two samples quietly."""

    def make(tmp_path, shard):
        with tarfile.open(shard) as tar:
            cut = next(m.offset for m in tar.getmembers() if m.name.startswith("a/0003"))
        with open(shard, "rb") as f:
            data = f.read()[:cut]
        path = tmp_path / f"t.{suffix}"
        path.write_bytes(compress(data))
        return str(path)

    return make


def _no_media(tmp_path, shard):
    return write_shard(tmp_path / "t.tar", [{"__key__": "k", "txt": "words only", "json": {"a": 1}}])


def _corrupt_member(tmp_path, shard):
    return write_shard(tmp_path / "t.tar", [{"__key__": "k", "jpg": b"\xff\xd8\xff not a jpeg", "txt": "x"}])


def _bad_json(tmp_path, shard):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k.png", png_bytes()), ("k.json", b"{nope")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize(
    "make,message",
    [
        (_truncated_tar, "t.tar: truncated or corrupt tar shard"),
        (_text_as_tar, "t.tar: truncated or corrupt tar shard"),
        (_corrupt_compressed("gz", gzip.compress), "t.tar.gz: truncated or corrupt tar shard"),
        (_cut_at_member("tar", bytes), "t.tar: truncated tar shard (it does not end with the end-of-archive"),
        (_cut_at_member("tar.gz", gzip.compress), "t.tar.gz: truncated tar shard"),
        (_corrupt_compressed("bz2", bz2.compress), "t.tar.bz2: truncated or corrupt tar shard"),
        (_corrupt_compressed("xz", lzma.compress), "t.tar.xz: truncated or corrupt tar shard"),
        (_no_media, "t.tar: sample k: no image or audio part (it has json, txt)"),
        (_corrupt_member, "t.tar: sample k: images/0000000.jpg: "),
        (_bad_json, "t.tar: sample k: .json part is not valid JSON"),
        (lambda p, s: str(p / "missing.tar"), "missing.tar: shard not found"),
        (lambda p, s: str(p / "missing-{0..1}.tar"), "missing-0.tar: shard not found"),
        (lambda p, s: str(p / "empty_folder"), "empty_folder: folder holds no .tar shards"),
    ],
    ids=[
        "truncated",
        "not a tar",
        "corrupt gz",
        "cut at a member",
        "gz cut at a member",
        "corrupt bz2",
        "corrupt xz",
        "no media",
        "corrupt picture",
        "bad json",
        "missing",
        "missing brace",
        "no shards",
    ],
)
def test_bad_webdataset_shards(make, message, shard, tmp_path, capsys):
    (tmp_path / "empty_folder").mkdir()
    err = fails(capsys, "data", "import-webdataset", make(tmp_path, shard), "--out", str(tmp_path / "out"))
    assert message in err and ".import-" not in err


# ---------------------------------------------------------------------------------------------- the out folder
def test_out_folder_rules(mnist, recordings, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    err = fails(capsys, "data", "import-mnist", *mnist, "--out", str(foreign))
    assert "exists and is not an imported data set" in err and "nothing was changed" in err
    assert os.listdir(foreign) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in fails(
        capsys, "data", "import-mnist", *mnist, "--out", str(tmp_path / "file")
    )

    out = tmp_path / "out"
    assert cli(capsys, "data", "import-mnist", *mnist, "--out", str(out))[0] == 0
    before = (out / "manifest.jsonl").read_text()
    fails(capsys, "data", "import-labelled-audio", recordings, "--out", str(out), "--pattern", "{label}.flac")
    assert (out / "manifest.jsonl").read_text() == before  # a failed import leaves the earlier one
    assert cli(capsys, "data", "import-labelled-audio", recordings, "--out", str(out))[0] == 0
    assert sorted(os.listdir(out)) == ["import.json", "manifest.jsonl"]  # the earlier import replaced whole
    assert sorted(os.listdir(tmp_path)) == sorted(["file", "mine", "out", "recordings", *map(os.path.basename, mnist)])


def test_out_that_cannot_be_made_or_holds_the_sources(mnist, recordings, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = fails(capsys, "data", "import-labelled-audio", recordings, "--out", str(tmp_path / "file" / "sub"))
    assert "sub: cannot create the output folder" in err
    out = tmp_path / "out"
    assert cli(capsys, "data", "import-mnist", *mnist, "--out", str(out))[0] == 0
    (tmp_path / "caps.csv").write_text("file,text\nimages/00000.png,a picture the import wrote\n")
    err = fails(capsys, "data", "import-captions", str(tmp_path / "caps.csv"), "--media", str(out), "--out", str(out))
    assert "lies in --out" in err and "give another --out" in err
    assert len(records(out)) == 3
