"""Checkpoints are read without running code from them, and a damaged checkpoint is named, skipped on resume
and refused on export with one line."""

import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from chameleon_lite.errors import ConfigError
from chameleon_lite.train import checkpoint as ckpt
from chameleon_lite.train.config import load_config
from chameleon_lite.train.export import export_run
from chameleon_lite.train.metrics import read_metrics
from chameleon_lite.train.trainer import train

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from synthetic import SyntheticLoader, write_meta  # noqa: E402
from test_trainer import BASE, _tokenizer_dir  # noqa: E402


class _Payload:
    """Unpickling this writes a marker file: what a hostile checkpoint would do with os.system instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cfg(data, out, *extra):
    return load_config("debug", configs_dir="", overrides=[*BASE, *extra], base={"data": data, "out": out})


@pytest.fixture
def run(tmp_path):
    """A finished run with checkpoints at steps 2 and 4, its vocabulary matching a tokenizer folder (for export)."""
    from synthetic import VOCAB

    from chameleon_lite.vocab import UnifiedVocab

    tok_dir, t = _tokenizer_dir(str(tmp_path / "tok"))
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )
    data = write_meta(str(tmp_path / "data"), vocab)
    out = str(tmp_path / "run")
    train(_cfg(data, out, "--steps=4", "--ckpt_every=2", f"--tokenizers={tok_dir}"), make_loader=SyntheticLoader)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4]
    return {"data": data, "out": out, "tok": tok_dir}


def _distcp(path: str) -> str:
    return next(os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".distcp"))


def _forget_digests(path: str) -> None:
    """Make a checkpoint look like one written before file digests were recorded."""
    p = os.path.join(path, ckpt.STATE_FILE)
    with open(p) as f:
        state = json.load(f)
    state.pop("files")
    with open(p, "w") as f:
        json.dump(state, f)


def test_hostile_metadata_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / ".metadata"
    bad.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ckpt.CorruptCheckpoint, match="not a checkpoint metadata type"):
        ckpt.read_metadata_file(str(bad))
    assert not marker.exists()
    plain = pickle.Unpickler(io.BytesIO(bad.read_bytes()))  # the same bytes through plain pickle do run code
    plain.load()
    assert marker.exists()


def test_hostile_metadata_in_a_run_is_refused_by_export_and_resume(run, tmp_path):
    marker = tmp_path / "pwned"
    newest = ckpt.latest_checkpoint(run["out"])
    with open(os.path.join(newest, ".metadata"), "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(ConfigError, match=r"\.metadata: checkpoint file damaged"):  # its digest no longer matches
        export_run(run["out"], str(tmp_path / "m1"))
    _forget_digests(newest)  # an older checkpoint: the metadata itself is read, through the allow-list
    with pytest.raises(
        ConfigError, match=r"\.metadata: not valid checkpoint metadata .*not a checkpoint metadata type"
    ):
        export_run(run["out"], str(tmp_path / "m2"))
    train(
        _cfg(run["data"], run["out"], "--steps=5", "--ckpt_every=2", f"--tokenizers={run['tok']}"),
        make_loader=SyntheticLoader,
    )
    assert not marker.exists()


def test_non_tensor_values_load_without_pickle_code(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"lr": _Payload(str(marker))}, buf)
    buf.seek(0)
    planner = ckpt.SafeLoadPlanner()
    with pytest.raises(pickle.UnpicklingError):
        planner.load_bytes(None, buf)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage", ["truncate", "zero", "missing_metadata", "truncate_legacy", "zero_legacy", "bad_state"]
)
def test_resume_skips_a_damaged_newest_checkpoint(run, damage, capfd):
    newest = ckpt.latest_checkpoint(run["out"])
    shard = _distcp(newest)
    size = os.path.getsize(shard)
    if damage.endswith("legacy"):
        _forget_digests(newest)
    if damage.startswith("truncate"):
        with open(shard, "r+b") as f:
            f.truncate(size // 2)
    elif damage.startswith("zero"):
        with open(shard, "wb") as f:
            f.write(bytes(size))
    elif damage == "missing_metadata":
        os.remove(os.path.join(newest, ".metadata"))
    else:
        with open(os.path.join(newest, ckpt.STATE_FILE), "w") as f:
            f.write("{not json")
    capfd.readouterr()
    train(
        _cfg(run["data"], run["out"], "--steps=6", "--ckpt_every=2", f"--tokenizers={run['tok']}"),
        make_loader=SyntheticLoader,
    )
    err = capfd.readouterr().err
    steps = [r["step"] for r in read_metrics(os.path.join(run["out"], "metrics.jsonl")) if "lr" in r]
    assert steps == list(range(6))  # resumed from step 2: steps 2..5 trained again, 0..1 kept
    if damage != "bad_state":  # an unreadable train_state.json makes it no checkpoint at all
        assert "skipping a damaged checkpoint" in err and "step_00000004" in err
    assert [s for s, _ in ckpt.list_checkpoints(run["out"])] == [2, 4, 6]
    ckpt.verify_files(newest, ckpt.read_train_state(newest))  # the damaged step 4 was written anew


def test_every_checkpoint_damaged_is_one_clear_error(run):
    for _, path in ckpt.list_checkpoints(run["out"]):
        with open(_distcp(path), "r+b") as f:
            f.truncate(10)
    with pytest.raises(ConfigError, match="no checkpoint of this run loads"):
        train(
            _cfg(run["data"], run["out"], "--steps=6", "--ckpt_every=2", f"--tokenizers={run['tok']}"),
            make_loader=SyntheticLoader,
        )


@pytest.mark.parametrize("legacy", [False, True])
def test_export_names_the_broken_file(run, tmp_path, legacy):
    newest = ckpt.latest_checkpoint(run["out"])
    shard = _distcp(newest)
    if legacy:
        _forget_digests(newest)
    with open(shard, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ConfigError, match=os.path.basename(shard) + ": checkpoint file (damaged|truncated)"):
        export_run(run["out"], str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    older = ckpt.list_checkpoints(run["out"])[0][1]
    export_run(run["out"], str(tmp_path / "model"), checkpoint=older)  # the message's way out works


def test_export_cli_damaged_checkpoint_is_one_line(run, tmp_path):
    os.remove(os.path.join(ckpt.latest_checkpoint(run["out"]), ".metadata"))
    r = subprocess.run(
        [sys.executable, "-m", "chameleon_lite.cli", "export", run["out"], "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and ".metadata: checkpoint file missing" in r.stderr, r.stderr


def test_export_format_chat(run, tmp_path):
    """export --format chat marks the model as trained on conversations (generate's default is then a user turn)."""
    out = str(tmp_path / "m")
    r = subprocess.run(
        [sys.executable, "-m", "chameleon_lite.cli", "export", run["out"], "--out", out, "--format", "chat"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.load(open(os.path.join(out, "generation.json"))) == {"format": "chat"}
