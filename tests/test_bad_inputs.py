"""Bad input to every reader of model folders, runs, checkpoints, shards and JSON files gets one clear line (a
UserError through the CLI, exit 1), never a traceback. Media files have their own battery in
tests/data/test_media_inputs.py; checkpoints in tests/train/test_checkpoint_safety.py."""

import json
import os

import numpy as np
import pytest

from chameleon_lite.cli import main
from chameleon_lite.demo import demo_model_dir

DEMO = demo_model_dir()


def _model_copy(tmp_path, damaged: str) -> str:
    """The shipped model folder as links, except ``damaged``, which is a real copy to spoil."""
    out = tmp_path / "model"
    out.mkdir()
    for name in os.listdir(DEMO):
        src = os.path.join(DEMO, name)
        if name == damaged:
            (out / name).write_bytes(open(src, "rb").read())
        else:
            os.symlink(src, out / name)
    return str(out)


def _edit_json(key, value):
    def edit(path):
        d = json.load(open(path))
        d[key] = value
        json.dump(d, open(path, "w"))

    return edit


def _write(data):
    def edit(path):
        with open(path, "wb") as f:
            f.write(data)

    return edit


def _truncate(n):
    def edit(path):
        with open(path, "r+b") as f:
            f.truncate(n)

    return edit


MODEL_CASES = {
    "config.json missing": ("config.json", os.remove, "model config not found"),
    "config.json not JSON": ("config.json", _write(b"{oops"), "not valid JSON"),
    "config.json a list": ("config.json", _write(b"[1, 2]"), "must be a JSON object"),
    "config.json binary": ("config.json", _write(b"\xff\xfe\x00"), "not valid JSON"),
    "config.json larger than memory": ("config.json", _edit_json("dim", 10**9), "more than this machine's"),
    "config.json negative": ("config.json", _edit_json("n_layers", -1), "config.json: n_layers must be a positive int"),
    "config.json wrong type": ("config.json", _edit_json("dim", "abc"), "dim must be a positive int"),
    "config.json unknown key": ("config.json", _edit_json("bogus", 1), "unknown model config key"),
    "vocab.json missing": ("vocab.json", os.remove, "vocab file not found"),
    "vocab.json not JSON": ("vocab.json", _write(b"nope"), "not valid JSON"),
    "vocab.json edited": ("vocab.json", _edit_json("text_size", 5), "does not match its contents"),
    "vocab.json negative": ("vocab.json", _edit_json("image_codebook", -3), "vocab.json: image_codebook"),
    "generation.json not JSON": ("generation.json", _write(b"{"), "not valid JSON"),
    "generation.json bad value": (
        "generation.json",
        _edit_json("image", {"temperature": -1}),
        "temperature must be >= 0",
    ),
    "generation.json a string": ("generation.json", _write(b'"x"'), "must be a JSON object"),
    "model.safetensors missing": ("model.safetensors", os.remove, "weights not found"),
    "model.safetensors truncated": ("model.safetensors", _truncate(1000), "not a valid safetensors file"),
    "model.safetensors empty": ("model.safetensors", _write(b""), "not a valid safetensors file"),
    "model.safetensors zeros": ("model.safetensors", _write(bytes(5000)), "not a valid safetensors file"),
    "model.safetensors huge header": (
        "model.safetensors",
        _write((2**60).to_bytes(8, "little") + b"{}"),
        "not a valid safetensors",
    ),
    "model.safetensors a pickle": ("model.safetensors", _write(b"\x80\x04K\x01."), "not a valid safetensors file"),
    "tokenizer.json missing": ("tokenizer.json", os.remove, "text tokenizer not found"),
    "tokenizer.json not JSON": ("tokenizer.json", _write(b"{"), "not a valid tokenizer.json"),
    "tokenizer.json empty object": ("tokenizer.json", _write(b"{}"), "not a valid tokenizer.json"),
    "image_vq.json not JSON": ("image_vq.json", _write(b"x"), "not valid JSON"),
    "image_vq.json bad size": (
        "image_vq.json",
        _edit_json("codebook_size", -1),
        "image_vq.json: codebook_size must be",
    ),
    "image_vq.safetensors truncated": ("image_vq.safetensors", _truncate(100), "not a readable safetensors file"),
    "image_vq.safetensors missing": ("image_vq.safetensors", os.remove, "tokenizer weights not found"),
    "audio_codec.json bad rate": ("audio_codec.json", _edit_json("sample_rate", 0), "audio_codec.json: sample_rate"),
    "audio_codec.safetensors truncated": ("audio_codec.safetensors", _truncate(100), "not a readable safetensors file"),
    "audio_codec.safetensors missing": (
        "audio_codec.safetensors",
        os.remove,
        "audio_codec.safetensors: audio codec weights not found",
    ),
}


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_damaged_model_folder_is_one_line(case, tmp_path, capsys):
    name, damage, message = MODEL_CASES[case]
    model = _model_copy(tmp_path, name)
    damage(os.path.join(model, name))
    rc = main(
        [
            "generate",
            "--model",
            model,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model", ["/etc/passwd", "."])
def test_a_model_path_that_is_no_model_folder(model, tmp_path, capsys):
    assert main(["generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from chameleon_lite.data.shards import ShardWriter
    from chameleon_lite.vocab import UnifiedVocab

    v = UnifiedVocab(text_size=50, image_codebook=0, audio_levels=0, audio_codebook=0)
    out = str(tmp_path_factory.mktemp("shards") / "train")
    with ShardWriter(out, v) as w:
        for n in (5, 7, 9):
            w.add(np.arange(n) + v.text_offset, [(1, 3)])
    return out


def _shard_copy(src, tmp_path):
    import shutil

    dst = str(tmp_path / "train")
    shutil.copytree(src, dst)
    return dst


SHARD_CASES = {
    "meta.json not JSON": ("meta.json", _write(b"{"), "not valid JSON"),
    "meta.json a list": ("meta.json", _write(b"[]"), 'no "vocab" object'),
    "meta.json without shards": (
        "meta.json",
        lambda p: (
            json.dump({k: v for k, v in json.load(open(p)).items() if k != "shards"}, open(p + ".x", "w"))
            or os.replace(p + ".x", p)
        ),
        'no "shards" list',
    ),
    "tokens truncated": ("tokens_00000.bin", _truncate(8), "the shard folder is incomplete or corrupt"),
    "tokens missing": ("tokens_00000.bin", os.remove, "found no file"),
    "tokens outside the vocabulary": (
        "tokens_00000.bin",
        lambda p: np.full(21, 10**6, "<u4").tofile(p),
        "outside the vocabulary",
    ),
    "docs index garbage": ("docs_00000.npy", _write(b"garbage"), "docs_00000.npy: shard index cannot be read"),
    "docs index pickled": (
        "docs_00000.npy",
        lambda p: np.save(p, np.array([None, 1], dtype=object), allow_pickle=True),
        "shard index cannot be read",
    ),
    "docs offsets past the end": (
        "docs_00000.npy",
        lambda p: np.save(p, np.array([0, 10**9], "int64")),
        "document offsets",
    ),
    "spans wrong shape": ("spans_00000.npy", lambda p: np.save(p, np.zeros((3, 3), "int64")), "span ranges"),
    "spans past the end": ("spans_00000.npy", lambda p: np.save(p, np.array([[0, 10**6]], "int64")), "span ranges"),
}


@pytest.mark.parametrize("case", list(SHARD_CASES), ids=list(SHARD_CASES))
def test_damaged_shards_are_one_clear_error(case, shards, tmp_path):
    from chameleon_lite.data.loader import PackedLoader
    from chameleon_lite.errors import UserError

    name, damage, message = SHARD_CASES[case]
    folder = _shard_copy(shards, tmp_path)
    damage(os.path.join(folder, name))
    with pytest.raises(UserError, match=message):
        loader = PackedLoader(folder, 16, 2)
        for _ in range(3):
            next(iter(loader))


@pytest.mark.parametrize("path", ["file", "missing"])
def test_shards_path_that_is_no_folder(path, tmp_path):
    from chameleon_lite.data.shards import ShardSet
    from chameleon_lite.errors import UserError

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        ShardSet(str(tmp_path / path))


RUN_CASES = {
    "run.json not JSON": (b"{", "not valid JSON"),
    "run.json a list": (b"[]", "must be a JSON object"),
    "run.json without model": (b'{"vocab": {}}', 'no "model" object'),
}


@pytest.mark.parametrize("case", list(RUN_CASES), ids=list(RUN_CASES))
def test_damaged_run_record_is_one_line_on_export(case, tmp_path, capsys):
    data, message = RUN_CASES[case]
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes(data)
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_export_checkpoint_flag_that_is_a_file(tmp_path, capsys):
    from chameleon_lite.train.checkpoint import CorruptCheckpoint, read_train_state

    (tmp_path / "f").write_text("x")
    with pytest.raises(CorruptCheckpoint, match="not a checkpoint folder"):
        read_train_state(str(tmp_path / "f"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["vocab", "--tokenizers", DEMO, "--out", "FILE"], "exists and is not a folder"),
        (["quickstart", "--out", "FILE"], "exists and is not a folder"),
        (["ship-demo", "--model", DEMO, "--recipe", "BAD", "--out", "NEW"], "recipe is not valid JSON"),
        (["data", "validate", "DIR"], None),
        (
            ["data", "tokenize", "--manifest", "DIR", "--tokenizers", DEMO, "--out", "NEW"],
            "is a folder; give the manifest file",
        ),
        (
            ["tokenizer", "train-image", "--manifest", "FILE", "--out", "NEW", "--set", "codebook_size"],
            "--set expects KEY=VALUE",
        ),
        (["tokenizer", "train-audio", "--manifest", "FILE", "--out", "NEW", "--set", "x=[1"], "is not JSON"),
        (
            ["tokenizer", "eval-image", "--tokenizer", DEMO, "--manifest", "FILE", "--json", "FILE"],
            "was not written by chameleon-lite",
        ),
        (
            ["tokenizer", "eval-image", "--tokenizer", DEMO, "--manifest", "FILE", "--grid", "FILE.png"],
            "was not written by chameleon-lite",
        ),
        (
            ["tokenizer", "image-recon", "--tokenizer", DEMO, "--out", "FILE.png", "x.png"],
            "was not written by chameleon-lite",
        ),
        (["tokenizer", "train-text", "--manifest", "MANIFEST", "--out", "FILE"], "exists and is not a folder"),
        (["tokenizer", "train-text", "--manifest", "IMAGES_ONLY", "--out", "NEW"], "no text segments to train on"),
        (
            ["tokenizer", "train-image", "--manifest", "MANIFEST", "--out", "FILE", "--steps", "1"],
            "exists and is not a folder",
        ),
        (
            ["tokenizer", "train-audio", "--manifest", "MANIFEST", "--out", "DIR_WITH_NOTES", "--steps", "1"],
            "holds notes.txt",
        ),
        (["tokenizer", "eval-audio", "--tokenizer", "FILE", "--manifest", "MANIFEST"], "is not a folder"),
    ],
)
def test_paths_and_files_of_the_wrong_kind(argv, message, tmp_path, capsys):
    for name in ("FILE", "FILE.png", "BAD"):
        (tmp_path / name).write_text("{x")
    (tmp_path / "DIR").mkdir()
    (tmp_path / "DIR_WITH_NOTES").mkdir()
    (tmp_path / "DIR_WITH_NOTES" / "notes.txt").write_text("keep me")
    (tmp_path / "MANIFEST").write_text('{"segments": [{"text": "hi"}]}\n')
    (tmp_path / "IMAGES_ONLY").write_text('{"segments": [{"image": "x.png"}]}\n')
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    names = ("FILE", "FILE.png", "BAD", "DIR", "NEW", "MANIFEST", "IMAGES_ONLY", "DIR_WITH_NOTES")
    argv = [str(tmp_path / a) if a in names else a for a in argv]
    assert main(argv) == 1
    out = capsys.readouterr()
    if message is not None:
        assert out.err.count("\n") == 1 and message in out.err, out.err
    assert (tmp_path / "FILE").read_text() == "{x" and (tmp_path / "FILE.png").read_text() == "{x"
    assert os.listdir(tmp_path / "DIR_WITH_NOTES") == ["notes.txt"] and not (tmp_path / "NEW").exists()
