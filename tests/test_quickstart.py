import json
import os

import pytest

from chameleon_lite.errors import ConfigError
from chameleon_lite.quickstart import (
    BEFORE_PRETRAIN,
    CALIBRATION,
    QuickstartConfig,
    build_stages,
    pretrain_minutes,
    quickstart,
    spent_minutes,
)
from chameleon_lite.train.budget import STEP_TIME_SHARE, measured_step_seconds, replan_steps, replanned_steps


def test_config_errors():
    with pytest.raises(ConfigError, match="budget"):
        QuickstartConfig(budget_minutes=0)
    with pytest.raises(ConfigError, match="pretrain_share"):
        QuickstartConfig(pretrain_share=1.5)
    with pytest.raises(ConfigError, match="n_docs"):
        QuickstartConfig(n_docs=0)
    with pytest.raises(ConfigError, match="reserve_share"):
        QuickstartConfig(reserve_share=1.0)
    with pytest.raises(ConfigError, match="schedule must be cosine or wsd, got 'step'"):
        QuickstartConfig(schedule="step")
    with pytest.raises(ConfigError, match=r"decay_frac must be in \(0, 1\), got 1.0"):
        QuickstartConfig(decay_frac=1.0)
    with pytest.raises(ConfigError, match="max_image_steps"):
        QuickstartConfig(max_image_steps=0)
    with pytest.raises(ConfigError, match="lr must be"):
        QuickstartConfig(lr=0)
    with pytest.raises(ConfigError, match="train_overrides"):
        QuickstartConfig(train_overrides=["n_layers", 4])


def test_pretraining_gets_the_quickstart_model_fields_and_learning_rate():
    from chameleon_lite.quickstart.stages import pretrain_config

    cfg = pretrain_config(QuickstartConfig(train_overrides={"n_layers": 2}, lr=1e-3), steps=10)
    assert (cfg.lr, cfg.model_overrides) == (1e-3, {"n_layers": 2})
    assert cfg.model_config(300, "h").n_layers == 2
    assert pretrain_config(QuickstartConfig(), steps=10).model_config(300, "h").n_layers == 4


def test_budget_scales_tokenizers_up_to_their_recipes_and_gives_the_rest_to_pretraining(tmp_path):
    default = QuickstartConfig()
    assert (default.image_train_steps, default.audio_train_steps) == (2500, 600)
    assert (
        QuickstartConfig(budget_minutes=3).image_train_steps,
        QuickstartConfig(budget_minutes=3).audio_train_steps,
    ) == (250, 60)
    long = QuickstartConfig(budget_minutes=300, out=str(tmp_path))
    assert (long.image_train_steps, long.audio_train_steps) == (4000, 3000)  # capped at the full recipes
    assert long.corpus_docs == 60000
    # pretraining: the budget less the time spent before it and the reserve, never below pretrain_share
    assert pretrain_minutes(long, spent=80.0) == pytest.approx(300 * 0.9 - 80.0)
    assert pretrain_minutes(long, spent=250.0) == pytest.approx(150.0)
    assert pretrain_minutes(default, spent=5.0) == pytest.approx(30 * 0.9 - 5.0)
    # the time spent is read from the pipeline's markers of the stages before pretraining
    for name, seconds in (("corpus", 60.0), ("image-tokenizer", 600.0), ("eval", 9999.0)):
        with open(os.path.join(str(tmp_path), f".stage-{name}.done"), "w") as f:
            json.dump({"params": {}, "seconds": seconds}, f)
    assert spent_minutes(long, BEFORE_PRETRAIN) == pytest.approx(11.0)
    names = [st.name for st in build_stages(long)]
    assert tuple(names[: names.index("pretrain")]) == BEFORE_PRETRAIN


def _metrics(run, rows):
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_step_count_is_refit_to_the_step_time_the_warm_up_measured(tmp_path):
    cfg = QuickstartConfig(out=str(tmp_path))
    run = str(tmp_path / "run")
    with open(cfg.path("calibration.json"), "w") as f:
        json.dump({"steps": 900, "step_seconds": 1.2, "pretrain_minutes": 20.0}, f)
    assert replanned_steps(cfg.path(CALIBRATION)) is None
    # step 0 (allocation) left out; validation rows and steps from after the warm-up are not step times of it
    rows = [{"step": 0, "step_time": 9.0}] + [
        {"step": i, "step_time": t} for i, t in enumerate([1.5, 1.6, 1.4, 1.5, 1.5], 1)
    ]
    _metrics(run, rows + [{"step": 5, "val_loss": 2.0}, {"step": 9, "step_time": 50.0}])
    assert measured_step_seconds(run, 6) == pytest.approx(1.5)
    steps = replan_steps(cfg.path(CALIBRATION), run, 900, 6, cfg.min_train_steps, cfg.max_train_steps)
    assert steps == int(20.0 * 60 * STEP_TIME_SHARE / 1.5)  # 640: the run is slower than the timed step, so fewer steps
    assert replanned_steps(cfg.path(CALIBRATION)) == steps  # kept for a resumed quickstart, with what it was fit to
    rec = json.load(open(cfg.path("calibration.json")))
    assert rec["run_step_seconds"] == 1.5 and rec["warmup"] == 6 and rec["steps"] == 900
    # bounds: never fewer than the warm-up nor min_train_steps, never more than max_train_steps
    _metrics(run, [{"step": i, "step_time": 1000.0} for i in range(6)])
    assert replan_steps(cfg.path(CALIBRATION), run, 900, 6, cfg.min_train_steps, cfg.max_train_steps) == 30
    _metrics(run, [{"step": i, "step_time": 1e-4} for i in range(6)])
    assert replan_steps(cfg.path(CALIBRATION), run, 900, 6, cfg.min_train_steps, cfg.max_train_steps) == 20000
    # no warm-up (or nothing logged): the first plan stands
    assert replan_steps(cfg.path(CALIBRATION), run, 40, 0, cfg.min_train_steps, cfg.max_train_steps) == 40
    _metrics(run, [])
    assert replan_steps(cfg.path(CALIBRATION), run, 41, 4, cfg.min_train_steps, cfg.max_train_steps) == 41


def test_the_decay_is_fit_to_the_wall_time_left(tmp_path, capsys):
    from chameleon_lite.train.budget import PLAN_SHARE, add_seconds, decay_plan, plan_decay
    from chameleon_lite.train.schedule import decay_start

    path = str(tmp_path / "calibration.json")
    with open(path, "w") as f:
        json.dump({"steps": 900, "step_seconds": 1.2, "pretrain_minutes": 20.0, "run_step_seconds": 1.1}, f)
    add_seconds(path, "warmup", 60.0)
    add_seconds(path, "stable", 500.0)
    add_seconds(path, "stable", 250.0)  # a phase run in two processes sums them
    assert decay_plan(path) is None
    # 750 s for the 750 steps after the warm-up: 1.0 s per step with validation and checkpoints; 390 s left
    total, frac = plan_decay(path, 800, 50, 20000)
    assert total == 800 + int(390 * PLAN_SHARE / 1.0) and decay_start(total, 50, frac) == 800
    assert decay_plan(path) == (total, frac)  # kept for a resumed run
    assert "the decay runs 370 steps, to 1170" in capsys.readouterr().out
    # past the budget the decay still gets a tenth of the steps done; never past max_steps in all
    add_seconds(path, "decay", 9999.0)
    assert plan_decay(path, 800, 50, 20000)[0] == 880
    assert plan_decay(path, 800, 50, 850)[0] == 850
    # nothing timed since the warm-up: the warm-up's median step time
    with open(path, "w") as f:
        json.dump({"steps": 900, "step_seconds": 1.2, "pretrain_minutes": 1.0, "run_step_seconds": 0.5}, f)
    assert plan_decay(path, 50, 50, 20000)[0] == 50 + int(60 * PLAN_SHARE / 0.5)


@pytest.mark.slow
def test_short_quickstart_end_to_end(tmp_path):
    """The whole loop at toy sizes: every stage runs, the outputs exist, and a second call resumes (does nothing)."""
    cfg = QuickstartConfig(
        out=str(tmp_path / "qs"),
        budget_minutes=1.0,
        n_docs=120,
        n_heldout=12,
        workers=1,
        text_vocab=300,
        train_model="debug",
        seq_len=128,
        batch_size=4,
        eval_n=3,
        min_train_steps=20,
        max_train_steps=20,
    )
    summary = quickstart(cfg)
    for key in ("model", "eval", "demo", "curves"):
        assert os.path.exists(summary[key]), key
    assert os.path.isfile(os.path.join(summary["model"], "audio_codec.json"))
    # the exported model samples as its evaluation does (generate --model and the demo document show what eval measures)
    from chameleon_lite.generate.engine import sampling_defaults

    assert {k: v.temperature for k, v in sampling_defaults(summary["model"]).items()} == {
        "text": 0.0,
        "image": 0.0,
        "audio": 0.0,
    }
    calib = json.load(open(os.path.join(cfg.out, "calibration.json")))
    # the warm-up (2 steps) ran first, then the run continued from its checkpoint with the refit count up to where
    # the decay begins (step 14 of 20), then with the count fit to the time left (capped at 20): every step once
    assert (
        calib["steps"] == 20 and calib["step_seconds"] > 0 and calib["replanned_steps"] == 20 and calib["warmup"] == 2
    )
    assert (
        calib["decay_from"] == 14
        and calib["final_steps"] == 20
        and set(calib["seconds"])
        == {
            "warmup",
            "stable",
            "decay",
        }
    )
    steps = [
        json.loads(line)["step"] for line in open(os.path.join(cfg.out, "run", "metrics.jsonl")) if "step_time" in line
    ]
    assert steps == list(range(20))
    ev = json.load(open(os.path.join(cfg.out, "eval", "eval.json")))
    assert "text_to_image" in json.dumps(ev) and "audio" in json.dumps(ev)
    again = quickstart(cfg)
    assert again["seconds_this_run"] < summary["seconds_this_run"]


def test_a_changed_tokenizer_recipe_changes_its_stage(monkeypatch):
    """The tokenizer stages are keyed by their whole recipe, so a quickstart folder made with another codec recipe
    trains the codec again (and the pipeline then reruns every later stage) instead of resuming the old one."""
    import dataclasses

    from chameleon_lite.tokenizers import audio_train

    cfg = QuickstartConfig(out="unused")
    before = {s.name: s.params for s in build_stages(cfg)}
    real = audio_train.quickstart_config
    monkeypatch.setattr(
        audio_train, "quickstart_config", lambda steps, seed=0: dataclasses.replace(real(steps, seed), mel_weight=1.0)
    )
    after = {s.name: s.params for s in build_stages(cfg)}
    assert before["audio-tokenizer"] != after["audio-tokenizer"]
    assert before["audio-tokenizer"]["spectral_floor_db"] == -30.0
    assert {k: v for k, v in before.items() if k != "audio-tokenizer"} == {
        k: v for k, v in after.items() if k != "audio-tokenizer"
    }


def test_the_tokenizers_can_train_on_the_corpus_first_documents(tmp_path):
    """tokenizer_docs: the three tokenizers read the corpus's first N documents (the transformer all of them); the
    procedural corpus is the same prefix at any size, so a larger corpus keeps a smaller one's tokenizers exactly."""
    from chameleon_lite.quickstart.stages import _corpus

    with pytest.raises(ConfigError, match="tokenizer_docs"):
        QuickstartConfig(tokenizer_docs=-1)
    small = QuickstartConfig(out=str(tmp_path / "small"), n_docs=6, workers=1)
    big = QuickstartConfig(out=str(tmp_path / "big"), n_docs=12, tokenizer_docs=6, workers=1)
    for cfg in (small, big):
        _corpus(cfg)
    assert small.tokenizer_manifest.endswith(os.path.join("corpus", "manifest.jsonl"))
    with open(small.tokenizer_manifest) as f, open(big.tokenizer_manifest) as g:
        assert f.read() == g.read()  # the same six documents, paths relative to the same folder layout
    with open(big.path("corpus", "manifest.jsonl")) as f:
        assert sum(1 for _ in f) == 12
    stages = {s.name: s.params for s in build_stages(big)}
    plain = {s.name: s.params for s in build_stages(QuickstartConfig(out="unused"))}
    for name in ("corpus", "text-tokenizer", "image-tokenizer", "audio-tokenizer"):
        assert stages[name]["tokenizer_docs"] == 6 and "tokenizer_docs" not in plain[name]
