import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from chameleon_lite.errors import ConfigError, DataError, UserError
from chameleon_lite.model import load_model
from chameleon_lite.train import trainer as trainer_mod
from chameleon_lite.train.checkpoint import list_checkpoints
from chameleon_lite.train.config import PretrainConfig, load_config
from chameleon_lite.train.export import export_run
from chameleon_lite.train.metrics import read_metrics
from chameleon_lite.train.schedule import decay_start, lr_at
from chameleon_lite.train.trainer import TrainingError, train

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from synthetic import VOCAB, SyntheticLoader, write_meta  # noqa: E402

BASE = ["--seq_len=64", "--batch_size=4", "--dtype=fp32", "--warmup=2", "--lr=0.003", "--peak_tflops=1"]


def _cfg(data, out, *extra):
    return load_config("debug", configs_dir="", overrides=[*BASE, *extra], base={"data": data, "out": out})


def _losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "lr" in r}


def _run(tmp_path, name, *extra):
    data = write_meta(str(tmp_path / "data"))
    out = str(tmp_path / name)
    train(_cfg(data, out, *extra), make_loader=SyntheticLoader)
    return out


def test_synthetic_loader_contract(tmp_path):
    """Rows of the global batch do not depend on the world size (what the equivalence tests rely on)."""
    data = write_meta(str(tmp_path / "data"))
    one = next(SyntheticLoader(data, 32, 4))
    halves = [next(SyntheticLoader(data, 32, 4, rank=r, world_size=2)) for r in range(2)]
    for k in one:
        assert torch.equal(one[k], torch.cat([h[k] for h in halves]))
    assert (
        one["input_ids"].dtype == torch.int64
        and one["doc_ids"].dtype == torch.int32
        and one["loss_mask"].dtype == torch.bool
    )


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_gives_identical_losses(tmp_path, optimizer):
    opt = f"--optimizer={optimizer}"
    full = _run(tmp_path, "full", "--steps=6", "--ckpt_every=3", opt)
    part = _run(tmp_path, "part", "--steps=6", "--ckpt_every=3", "--stop_after=3", opt)
    assert sorted(_losses(part)) == [0, 1, 2]
    assert [s for s, _ in list_checkpoints(part)] == [3]
    _run(tmp_path, "part", "--steps=6", "--ckpt_every=3", opt)
    a, b = _losses(full), _losses(part)
    assert sorted(b) == list(range(6))
    assert a == b  # bit-identical: same process layout, same batches, restored optimiser and RNG state


def test_a_wsd_run_refit_at_its_decay_resumes_exactly(tmp_path):
    """The quickstart's last plan: stop where the decay begins, then go on with another step count and the decay
    share that starts the decay there. The steps before it are those of a run planned with that count from the
    start: same learning rates, same losses."""
    wsd = ("--schedule=wsd", "--ckpt_every=7")
    full = _run(tmp_path, "full", "--steps=12", "--decay_frac=0.4166666666666667", *wsd)  # decays from step 7
    part = _run(tmp_path, "part", "--steps=10", "--decay_frac=0.3", "--stop_after=7", *wsd)  # decay_start(10) = 7
    _run(tmp_path, "part", "--steps=12", "--decay_frac=0.4166666666666667", *wsd)
    assert _losses(full) == _losses(part) and sorted(_losses(part)) == list(range(12))
    lrs = [r["lr"] for r in read_metrics(os.path.join(part, "metrics.jsonl")) if "lr" in r]
    assert lrs[2:7] == [0.003] * 5 and lrs[-1] == pytest.approx(0.0003) and lrs[6] > lrs[7] > lrs[8]


def test_checkpoints_are_pruned_and_complete(tmp_path):
    run = _run(tmp_path, "r", "--steps=4", "--ckpt_every=1", "--keep_ckpts=2")
    assert [s for s, _ in list_checkpoints(run)] == [3, 4]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.endswith(".tmp")]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_learning_signal_and_modalities(tmp_path, optimizer):
    run = _run(
        tmp_path,
        "r",
        "--steps=25",
        "--ckpt_every=25",
        "--lr=0.01",
        f"--val_data={tmp_path / 'data'}",
        "--val_every=24",
        f"--optimizer={optimizer}",
    )
    recs = read_metrics(os.path.join(run, "metrics.jsonl"))
    train_recs = [r for r in recs if "lr" in r]
    assert {"loss_text", "loss_image", "loss_audio", "z", "grad_norm", "tokens_per_s", "mfu"} <= set(train_recs[0])
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 1.0
    val = [r for r in recs if "val_loss" in r]
    assert {"val_loss_text", "val_loss_image", "val_loss_audio"} <= set(val[-1])


def test_non_finite_step_is_skipped(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer_mod.token_losses

    def poisoned(logits, targets):
        ce, lse = real(logits, targets)
        calls["n"] += 1
        return (ce * float("nan"), lse) if calls["n"] == 3 else (ce, lse)

    monkeypatch.setattr(trainer_mod, "token_losses", poisoned)
    run = _run(tmp_path, "r", "--steps=5", "--ckpt_every=5")
    recs = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "lr" in r]
    assert [bool(r.get("skipped")) for r in recs] == [False, False, True, False, False]
    assert math.isnan(recs[2]["loss"]) and all(math.isfinite(r["loss"]) for r in recs[3:])


def test_persistent_non_finite_stops_the_run(tmp_path):
    # lr so large that one Adam step pushes every weight to ~1e30: all later losses overflow.
    with pytest.raises(TrainingError, match="non-finite for 3 steps in a row"):
        _run(tmp_path, "r", "--steps=10", "--lr=1e30", "--warmup=0", "--max_nonfinite=3", "--grad_clip=0")
    recs = [r for r in read_metrics(str(tmp_path / "r" / "metrics.jsonl")) if "lr" in r]
    assert [bool(r.get("skipped")) for r in recs] == [False, True, True, True]


def _tokenizer_dir(path, vocab=VOCAB):
    """Tokenizer artifacts defining ``vocab``: a real BPE for the text range, image/audio configs for the sizes."""
    from chameleon_lite.tokenizers.text import TextTokenizer

    texts = [f"word{i} another{i % 7} text {i * 13}" for i in range(400)]
    tok = TextTokenizer.train(texts, vocab_size=vocab.text_size, min_frequency=1, progress=False)
    os.makedirs(path, exist_ok=True)
    tok.save(path)
    with open(os.path.join(path, "image_vq.json"), "w") as f:
        json.dump({"codebook_size": vocab.image_codebook}, f)
    with open(os.path.join(path, "audio_codec.json"), "w") as f:
        json.dump({"num_levels": vocab.audio_levels, "codebook_size": vocab.audio_codebook}, f)
    return path, tok.vocab_size


def test_export_and_load_round_trip(tmp_path):
    from chameleon_lite.vocab import UnifiedVocab

    tok_dir, t = _tokenizer_dir(str(tmp_path / "tok"))
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )
    data = write_meta(str(tmp_path / "data"), vocab)
    run = str(tmp_path / "run")
    last = train(
        _cfg(
            data, run, "--steps=3", "--ckpt_every=3", f"--tokenizers={tok_dir}", f"--val_data={data}", "--val_every=3"
        ),
        make_loader=SyntheticLoader,
    )
    assert last["step"] == 2
    out = export_run(run, str(tmp_path / "model"))
    assert sorted(os.listdir(out)) == [
        "audio_codec.json",
        "config.json",
        "image_vq.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
    ]
    model = load_model(out)
    assert model.config.vocab_hash == vocab.hash
    # The exported weights reproduce the validation loss the run logged after its last step (4 val batches).
    from chameleon_lite.model import token_losses

    val = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if "val_loss" in r][-1]
    it = SyntheticLoader(data, 64, 4, seed=0)
    tot, n = 0.0, 0
    with torch.no_grad():
        for _ in range(4):
            bb = next(it)
            ce, _ = token_losses(model(bb["input_ids"], bb["positions"], bb["doc_ids"], bb["span_ids"]), bb["targets"])
            tot += float(ce[bb["loss_mask"]].double().sum())
            n += int(bb["loss_mask"].sum())
    assert abs(tot / n - val["val_loss"]) < 1e-5 * val["val_loss"]


def test_load_model_refuses_mismatched_vocab(tmp_path):
    from chameleon_lite.vocab import UnifiedVocab

    tok_dir, t = _tokenizer_dir(str(tmp_path / "tok"))
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )
    data = write_meta(str(tmp_path / "data"), vocab)
    run = str(tmp_path / "run")
    train(_cfg(data, run, "--steps=1", f"--tokenizers={tok_dir}"), make_loader=SyntheticLoader)
    out = export_run(run, str(tmp_path / "model"))
    with open(os.path.join(out, "audio_codec.json"), "w") as f:
        json.dump({"num_levels": 3, "codebook_size": 32}, f)
    with pytest.raises(ConfigError, match="trained on"):
        load_model(out)
    other = UnifiedVocab(text_size=t, image_codebook=8, audio_levels=0, audio_codebook=0)
    other.save(out)
    with pytest.raises(ConfigError, match="vocab.json"):
        load_model(out)
    # Export refuses tokenizers that do not define the run's vocabulary.
    bad_tok, _ = _tokenizer_dir(
        str(tmp_path / "tok2"), UnifiedVocab(text_size=t, image_codebook=16, audio_levels=2, audio_codebook=32)
    )
    with pytest.raises(ConfigError, match="trained on"):
        export_run(run, str(tmp_path / "model2"), tokenizers_dir=bad_tok)


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(
        "debug",
        configs_dir="",
        overrides=["--lr=1e-3", "--steps=7", "--model.n_layers=2", "--parallel=ddp", "--compile=true"],
    )
    assert (cfg.lr, cfg.steps, cfg.parallel, cfg.compile, cfg.model_overrides) == (
        1e-3,
        7,
        "ddp",
        True,
        {"n_layers": 2},
    )
    assert cfg.model_config(100, "h").n_layers == 2
    assert PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown training option"):
        load_config("debug", configs_dir="", overrides=["--lrr=1"])
    with pytest.raises(ConfigError, match="unknown model field"):
        load_config("debug", configs_dir="", overrides=["--model.width=1"])
    with pytest.raises(ConfigError, match="steps must be a positive int"):
        load_config("debug", configs_dir="", overrides=["--steps=0"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("nonexistent", configs_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="dtype"):
        load_config("debug", configs_dir="", overrides=["--dtype=fp8"])


def test_shipped_configs_are_valid():
    root = os.path.join(HERE, "..", "..", "train", "configs")
    names = [n[:-5] for n in os.listdir(root) if n.endswith(".json")]
    assert {"debug", "tiny"} <= set(names)
    for n in names:
        load_config(n, configs_dir=root)


def test_missing_data_meta_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="meta.json"):
        train(_cfg(str(tmp_path), str(tmp_path / "r"), "--steps=1"), make_loader=SyntheticLoader)


def test_schedule():
    kw = dict(lr=1.0, warmup=10, total=110, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)


def test_wsd_schedule_holds_the_peak_then_decays_linearly_to_the_floor():
    kw = dict(lr=1.0, warmup=10, total=110, min_lr_ratio=0.1, schedule="wsd", decay_frac=0.3)
    assert decay_start(110, 10, 0.3) == 77
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert [lr_at(s, **kw) for s in (9, 10, 50, 76)] == [1.0] * 4
    assert lr_at(77, **kw) == pytest.approx(1.0 - 0.9 / 33)  # the decay's first step is already below the peak
    assert lr_at(109, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    assert all(lr_at(s, **kw) > lr_at(s + 1, **kw) for s in range(77, 109))
    assert decay_start(20, 10, 0.9) == 10  # never inside the warm-up
    # the stable phase does not depend on the step count: a count refit where the decay begins changes no step before
    n = 45
    refit = dict(kw, total=77 + n, decay_frac=n / (77 + n))
    assert decay_start(77 + n, 10, n / (77 + n)) == 77
    assert [lr_at(s, **refit) for s in range(77)] == [lr_at(s, **kw) for s in range(77)]
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_at(20, **dict(kw, schedule="linear"))


def test_a_bad_schedule_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="schedule must be one of"):
        _cfg(str(tmp_path), str(tmp_path / "r"), "--schedule=step")
    with pytest.raises(ConfigError, match="decay_frac must lie in"):
        _cfg(str(tmp_path), str(tmp_path / "r"), "--schedule=wsd", "--decay_frac=0")


def test_plot_command(tmp_path):
    from chameleon_lite.cli import main

    run = _run(tmp_path, "r", "--steps=3", f"--val_data={tmp_path / 'data'}", "--val_every=2")
    assert main(["plot", run, "--out", str(tmp_path / "c.png")]) == 0
    assert os.path.getsize(tmp_path / "c.png") > 1000
    assert main(["plot", str(tmp_path)]) == 1


def _torchrun(tmp_path, nproc, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.join(HERE, "run_synthetic.py"),
        f"--data={tmp_path / 'data'}",
        f"--out={out}",
        *BASE,
        *extra,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("parallel", ["fsdp", pytest.param("ddp", marks=pytest.mark.slow)])
def test_two_processes_match_one_and_resume_across_world_sizes(tmp_path, parallel):
    """torchrun with 2 gloo ranks gives the losses of 1 process over the same global batches (<= 1e-5 relative),
    and a 2-rank checkpoint resumes in 1 process onto the same loss sequence."""
    single = _run(tmp_path, "single", "--steps=6", "--ckpt_every=3", "--grad_accum=2")
    dist_run = str(tmp_path / "dist")
    _torchrun(tmp_path, 2, dist_run, "--steps=6", "--ckpt_every=3", "--grad_accum=2", f"--parallel={parallel}")
    a, b = _losses(single), _losses(dist_run)
    assert sorted(b) == list(range(6))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s]), (s, a[s], b[s])
    # Resume the 2-rank step-3 checkpoint in one process.
    shutil.rmtree(os.path.join(dist_run, "checkpoints", "step_00000006"))
    train(
        _cfg(str(tmp_path / "data"), dist_run, "--steps=6", "--ckpt_every=3", "--grad_accum=2"),
        make_loader=SyntheticLoader,
    )
    c = _losses(dist_run)
    assert sorted(c) == list(range(6))
    for s in a:
        assert abs(a[s] - c[s]) <= 1e-5 * abs(a[s]), (s, a[s], c[s])


def test_export_and_load_errors(tmp_path):
    from chameleon_lite.vocab import UnifiedVocab

    with pytest.raises(ConfigError, match="model folder not found"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="run.json"):
        export_run(str(tmp_path), str(tmp_path / "m"))
    tok_dir, t = _tokenizer_dir(str(tmp_path / "tok"))
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )
    data = write_meta(str(tmp_path / "data"), vocab)
    run = str(tmp_path / "run")
    train(_cfg(data, run, "--steps=1", f"--tokenizers={tok_dir}"), make_loader=SyntheticLoader)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an exported model folder"):
        export_run(run, str(busy))
    assert (busy / "notes.txt").read_text() == "keep me"
    out = export_run(run, str(tmp_path / "model"))
    export_run(run, out)  # re-exporting over an export replaces it
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(b"not safetensors")
    with pytest.raises(ConfigError, match="safetensors"):
        load_model(out)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = _losses(_run(tmp_path, "eager", "--steps=3", "--ckpt_every=3"))
    compiled = _losses(_run(tmp_path, "compiled", "--steps=3", "--ckpt_every=3", "--compile=true"))
    for s in eager:
        assert compiled[s] == pytest.approx(eager[s], rel=1e-4)


def test_validation_shards_must_share_the_vocabulary(tmp_path):
    from chameleon_lite.vocab import UnifiedVocab

    data = write_meta(str(tmp_path / "data"))
    val = write_meta(
        str(tmp_path / "val"), UnifiedVocab(text_size=301, image_codebook=64, audio_levels=2, audio_codebook=32)
    )
    with pytest.raises(DataError, match="validation shards use vocabulary"):
        train(_cfg(data, str(tmp_path / "r"), "--steps=1", f"--val_data={val}"), make_loader=SyntheticLoader)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text('{"vocab": {"text_size": "x"}}')
    with pytest.raises(UserError, match="bad/meta.json"):
        train(_cfg(str(tmp_path / "bad"), str(tmp_path / "r2"), "--steps=1"), make_loader=SyntheticLoader)


def test_activation_checkpointing_matches_and_exports(tmp_path):
    """Recomputing blocks in backward changes no loss, and its checkpoints hold plain parameter names (export
    and resume without the flag work)."""
    from chameleon_lite.vocab import UnifiedVocab

    tok_dir, t = _tokenizer_dir(str(tmp_path / "tok"))
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )
    data = write_meta(str(tmp_path / "data"), vocab)
    plain, ac = str(tmp_path / "plain"), str(tmp_path / "ac")
    train(_cfg(data, plain, "--steps=4", "--ckpt_every=2"), make_loader=SyntheticLoader)
    train(
        _cfg(
            data,
            ac,
            "--steps=4",
            "--ckpt_every=2",
            "--stop_after=2",
            "--activation_checkpoint=true",
            f"--tokenizers={tok_dir}",
        ),
        make_loader=SyntheticLoader,
    )
    load_model(export_run(ac, str(tmp_path / "model")))
    train(_cfg(data, ac, "--steps=4", "--ckpt_every=2"), make_loader=SyntheticLoader)
    a, b = _losses(plain), _losses(ac)
    assert sorted(b) == [0, 1, 2, 3]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-6)


def test_pretrain_entry_point_reports_errors_in_one_line(tmp_path):
    script = os.path.join(HERE, "..", "..", "train", "pretrain.py")
    for extra, expected in (
        (["--config", "nonexistent"], "training config 'nonexistent' not found"),
        (["--config", "debug", "--lrr=1"], "unknown training option"),
        (["--config", "debug"], "meta.json"),
    ):
        r = subprocess.run(
            [sys.executable, script, "--data", str(tmp_path), "--out", str(tmp_path / "run"), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 1, r.stderr
        assert expected in r.stderr and "Traceback" not in r.stderr


def _exported(tmp_path, name, *extra):
    """A short run on the synthetic data with real tokenizer artifacts, exported; returns (model dir, data dir, tokenizers)."""
    from chameleon_lite.vocab import UnifiedVocab

    tok_dir, t = _tokenizer_dir(str(tmp_path / "tok"))
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )
    data = write_meta(str(tmp_path / "data"), vocab)
    run = str(tmp_path / name)
    train(
        _cfg(data, run, "--steps=4", "--ckpt_every=4", f"--tokenizers={tok_dir}", *extra), make_loader=SyntheticLoader
    )
    return export_run(run, str(tmp_path / f"{name}-model")), data, tok_dir


def test_init_from_continues_from_an_exported_model(tmp_path):
    """A run started from an exported model begins with its weights (its first loss is the exported model's
    loss on that batch, far below a fresh start's) and a resumed continued run takes its checkpoint, not the init."""
    from chameleon_lite.model import token_losses

    src, data, tok = _exported(tmp_path, "first")
    fresh = _run(tmp_path, "fresh", "--steps=1", f"--tokenizers={tok}")
    cont = str(tmp_path / "cont")
    cfg = _cfg(data, cont, "--steps=4", "--ckpt_every=2", "--stop_after=2", f"--tokenizers={tok}", f"--init_from={src}")
    train(cfg, make_loader=SyntheticLoader)
    model = load_model(src)
    b = next(SyntheticLoader(data, 64, 4, seed=0))
    with torch.no_grad():
        ce, _ = token_losses(model(b["input_ids"], b["positions"], b["doc_ids"], b["span_ids"]), b["targets"])
    expected = float(ce[b["loss_mask"]].mean())
    first = _losses(cont)[0]
    assert abs(first - expected) < 1e-4 * expected, (first, expected)
    assert first < _losses(fresh)[0] - 0.05
    with open(os.path.join(cont, "run.json")) as f:
        assert json.load(f)["train"]["init_from"] == src
    # Resuming: the checkpoint's weights win, so the continued run matches an uninterrupted one bit for bit.
    train(
        _cfg(data, cont, "--steps=4", "--ckpt_every=2", f"--tokenizers={tok}", f"--init_from={src}"),
        make_loader=SyntheticLoader,
    )
    whole = str(tmp_path / "whole")
    train(
        _cfg(data, whole, "--steps=4", "--ckpt_every=2", f"--tokenizers={tok}", f"--init_from={src}"),
        make_loader=SyntheticLoader,
    )
    assert _losses(cont) == _losses(whole)


def test_init_from_errors(tmp_path):
    src, data, tok = _exported(tmp_path, "first")
    with pytest.raises(ConfigError, match="model folder not found"):
        train(
            _cfg(data, str(tmp_path / "a"), "--steps=1", f"--init_from={tmp_path / 'nowhere'}"),
            make_loader=SyntheticLoader,
        )
    with pytest.raises(ConfigError, match=r"differs from the run's model .*dim=128 vs 64"):
        train(
            _cfg(data, str(tmp_path / "b"), "--steps=1", "--model.dim=64", f"--init_from={src}"),
            make_loader=SyntheticLoader,
        )
    # Data on another vocabulary.
    from chameleon_lite.vocab import UnifiedVocab

    other = write_meta(
        str(tmp_path / "other"),
        UnifiedVocab(
            text_size=VOCAB.text_size,
            image_codebook=VOCAB.image_codebook,
            audio_levels=1,
            audio_codebook=VOCAB.audio_codebook,
        ),
    )
    with pytest.raises(ConfigError, match="trained on vocabulary .* the data uses"):
        train(_cfg(other, str(tmp_path / "c"), "--steps=1", f"--init_from={src}"), make_loader=SyntheticLoader)
    # Weights that do not fit config.json.
    from safetensors.torch import load_file, save_file

    w = os.path.join(src, "model.safetensors")
    state = load_file(w)
    state.pop(sorted(state)[0])
    save_file(state, w)
    with pytest.raises(ConfigError, match="weights do not fit the model .*missing"):
        train(_cfg(data, str(tmp_path / "d"), "--steps=1", f"--init_from={src}"), make_loader=SyntheticLoader)
    with open(w, "wb") as f:
        f.write(b"not safetensors")
    with pytest.raises(ConfigError, match="not a valid safetensors file"):
        train(_cfg(data, str(tmp_path / "e"), "--steps=1", f"--init_from={src}"), make_loader=SyntheticLoader)


def _codes_weights(path, codebook=0.0, decoder=0.0):
    """A stand-in image tokenizer weights file: encoder, quantizer and decoder tensors (codes_hash reads only these)."""
    from safetensors.torch import save_file

    save_file(
        {
            "encoder.conv.weight": torch.ones(4, 3),
            "quantizer.codebook": torch.full((16, 4), codebook),
            "decoder.conv.weight": torch.full((3, 4), decoder),
        },
        os.path.join(path, "image_vq.safetensors"),
    )


def test_codes_hash_tells_retrained_tokenizers_apart(tmp_path):
    """The vocab hash covers only the id layout; the codes hash binds shards, checkpoints and exported models to
    the tokenizers that made their codes: a retrained tokenizer of the same sizes is refused everywhere, a
    fine-tuned decoder is not."""
    from chameleon_lite.bundle import codes_hash
    from chameleon_lite.generate.engine import Generator
    from chameleon_lite.tokenizers.loader import Tokenizers
    from chameleon_lite.vocab import UnifiedVocab

    tok, t = _tokenizer_dir(str(tmp_path / "tok"))
    _codes_weights(tok)
    h = codes_hash(tok)
    retrained = shutil.copytree(tok, str(tmp_path / "retrained"))
    _codes_weights(retrained, codebook=0.5)
    decoder_tuned = shutil.copytree(tok, str(tmp_path / "decoder_tuned"))
    _codes_weights(decoder_tuned, decoder=0.5)
    assert codes_hash(decoder_tuned) == h != codes_hash(retrained)
    other_text = shutil.copytree(tok, str(tmp_path / "other_text"))
    with open(os.path.join(other_text, "tokenizer.json"), "a") as f:
        f.write(" ")
    assert codes_hash(other_text) != h
    vocab = UnifiedVocab(
        text_size=t,
        image_codebook=VOCAB.image_codebook,
        audio_levels=VOCAB.audio_levels,
        audio_codebook=VOCAB.audio_codebook,
    )

    def shards(name, codes):
        d = write_meta(str(tmp_path / name), vocab)
        meta = json.load(open(os.path.join(d, "meta.json")))
        json.dump({**meta, "codes_hash": codes}, open(os.path.join(d, "meta.json"), "w"))
        return d

    data = shards("data", h)
    run = str(tmp_path / "run")
    train(_cfg(data, run, "--steps=2", "--ckpt_every=2", f"--tokenizers={tok}"), make_loader=SyntheticLoader)
    model_dir = export_run(run, str(tmp_path / "model"))
    assert load_model(model_dir).config.codes_hash == h
    # shards made by other tokenizers than the run is given; validation shards of other codes
    with pytest.raises(ConfigError, match="tokenized with other tokenizers"):
        train(_cfg(data, str(tmp_path / "r1"), "--steps=1", f"--tokenizers={retrained}"), make_loader=SyntheticLoader)
    no_text = shutil.copytree(tok, str(tmp_path / "no_text"))
    os.remove(os.path.join(no_text, "tokenizer.json"))
    with pytest.raises(ConfigError, match="no_text/tokenizer.json: text tokenizer not found"):
        train(_cfg(data, str(tmp_path / "r0"), "--steps=1", f"--tokenizers={no_text}"), make_loader=SyntheticLoader)
    with pytest.raises(DataError, match="validation shards were tokenized with other tokenizers"):
        train(
            _cfg(data, str(tmp_path / "r2"), "--steps=1", f"--val_data={shards('val', codes_hash(retrained))}"),
            make_loader=SyntheticLoader,
        )
    # continued pretraining on data of other codes; resuming a checkpoint with other tokenizers
    with pytest.raises(ConfigError, match="trained on other codes"):
        train(
            _cfg(shards("data2", codes_hash(retrained)), str(tmp_path / "r3"), "--steps=1", f"--init_from={model_dir}"),
            make_loader=SyntheticLoader,
        )
    with pytest.raises(ConfigError, match="checkpoint was trained on other codes"):
        train(
            _cfg(write_meta(str(tmp_path / "plain"), vocab), run, "--steps=4", f"--tokenizers={retrained}"),
            make_loader=SyntheticLoader,
        )
    with open(os.path.join(run, "run.json")) as f:
        assert json.load(f)["model"]["codes_hash"] == h  # the refused resume left the run as it was
    # export with other tokenizers; a model folder whose tokenizers were swapped; a Generator given other tokenizers
    with pytest.raises(ConfigError, match="make other codes"):
        export_run(run, str(tmp_path / "model2"), tokenizers_dir=retrained)
    shutil.copy(os.path.join(decoder_tuned, "image_vq.safetensors"), model_dir)
    model = load_model(model_dir)  # a fine-tuned decoder keeps the codes
    shutil.copy(os.path.join(retrained, "image_vq.safetensors"), model_dir)
    with pytest.raises(ConfigError, match="make other codes .* although the vocabulary sizes agree"):
        load_model(model_dir)
    with pytest.raises(ConfigError, match="the tokenizers make other codes"):
        Generator(model, Tokenizers(vocab=vocab, text=None, codes_hash=codes_hash(retrained)))
    with open(os.path.join(model_dir, "image_vq.safetensors"), "wb") as f:
        f.write(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_model(model_dir)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    from chameleon_lite.model import build_model
    from chameleon_lite.model.config import preset
    from chameleon_lite.train.optim import OptimizerSet, build_optimizer

    model = build_model(preset("tiny", n_layers=2, dim=64, n_heads=2, n_kv_heads=2, ffn_dim=128, vocab_size=300))
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), kind="muon")
    assert isinstance(opt, OptimizerSet) and isinstance(opt[0], torch.optim.Muon)
    muon = {id(p) for g in opt[0].param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names and all(".layers." in f".{n}" and n.endswith("weight") for n in names)
    assert not any(n.startswith(("tok_embeddings", "output")) or "norm" in n for n in names)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), kind="sgd")
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        PretrainConfig(optimizer="lion")


def test_bf16_autocast_training_checks_its_kernel_and_tracks_fp32(tmp_path):
    """The bf16 autocast path a GPU run takes, on the CPU: the fused attention checks itself for bf16 before the
    first step, and the losses follow the fp32 run's."""
    from chameleon_lite.ops import verify

    verify.clear()
    fp32 = _losses(_run(tmp_path, "fp32", "--steps=3", "--ckpt_every=3"))
    bf16 = _losses(_run(tmp_path, "bf16", "--steps=3", "--ckpt_every=3", "--dtype=bf16"))
    assert any(r.op == "attention" and r.dtype == "bfloat16" and r.ok for r in verify.results())
    assert sorted(bf16) == sorted(fp32)
    for s in fp32:
        assert math.isfinite(bf16[s]) and bf16[s] == pytest.approx(fp32[s], rel=5e-2)


def test_untied_model_trains_on_two_fsdp_ranks_like_one_and_exports(tmp_path):
    """Modality-untied weights (--model.untied=all): the trainer routes by the data's vocabulary, 2 FSDP ranks give
    the losses of 1 process (a rank whose tokens lack a modality still runs that copy), and the export loads."""
    single = _run(tmp_path, "single", "--steps=4", "--ckpt_every=4", "--model.untied=all")
    dist_run = str(tmp_path / "dist")
    _torchrun(tmp_path, 2, dist_run, "--steps=4", "--ckpt_every=4", "--parallel=fsdp", "--model.untied=all")
    a, b = _losses(single), _losses(dist_run)
    assert sorted(b) == list(range(4))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s]), (s, a[s], b[s])
    model_dir, _, _ = _exported(tmp_path / "exp", "untied", "--model.untied=all")
    cfg = load_model(model_dir).config
    assert cfg.untied_parts == ("attention", "ffn", "norms") and 0 < cfg.image_start < cfg.audio_start
