import json
import os

import pytest

from chameleon_lite.errors import ConfigError
from chameleon_lite.quickstart import (BEFORE_PRETRAIN, QuickstartConfig, build_stages, pretrain_minutes, quickstart,
                                      spent_minutes)


def test_config_errors():
    with pytest.raises(ConfigError, match="budget"):
        QuickstartConfig(budget_minutes=0)
    with pytest.raises(ConfigError, match="pretrain_share"):
        QuickstartConfig(pretrain_share=1.5)
    with pytest.raises(ConfigError, match="n_docs"):
        QuickstartConfig(n_docs=0)
    with pytest.raises(ConfigError, match="reserve_share"):
        QuickstartConfig(reserve_share=1.0)
    with pytest.raises(ConfigError, match="max_image_steps"):
        QuickstartConfig(max_image_steps=0)


def test_budget_scales_tokenizers_up_to_their_recipes_and_gives_the_rest_to_pretraining(tmp_path):
    default = QuickstartConfig()
    assert (default.image_train_steps, default.audio_train_steps) == (1000, 600)
    assert (QuickstartConfig(budget_minutes=3).image_train_steps, QuickstartConfig(budget_minutes=3).audio_train_steps) == (100, 60)
    long = QuickstartConfig(budget_minutes=300, out=str(tmp_path))
    assert (long.image_train_steps, long.audio_train_steps) == (4000, 3000)  # capped at the full recipes
    assert long.corpus_docs == 60000
    # pretraining: the budget less the time spent before it and the reserve, never below pretrain_share
    assert pretrain_minutes(long, spent=80.0) == pytest.approx(300 * 0.92 - 80.0)
    assert pretrain_minutes(long, spent=250.0) == pytest.approx(150.0)
    assert pretrain_minutes(default, spent=5.0) == pytest.approx(30 * 0.92 - 5.0)
    # the time spent is read from the pipeline's markers of the stages before pretraining
    for name, seconds in (("corpus", 60.0), ("image-tokenizer", 600.0), ("eval", 9999.0)):
        with open(os.path.join(str(tmp_path), f".stage-{name}.done"), "w") as f:
            json.dump({"params": {}, "seconds": seconds}, f)
    assert spent_minutes(long, BEFORE_PRETRAIN) == pytest.approx(11.0)
    names = [st.name for st in build_stages(long)]
    assert tuple(names[:names.index("pretrain")]) == BEFORE_PRETRAIN


@pytest.mark.slow
def test_short_quickstart_end_to_end(tmp_path):
    """The whole loop at toy sizes: every stage runs, the outputs exist, and a second call resumes (does nothing)."""
    cfg = QuickstartConfig(out=str(tmp_path / "qs"), budget_minutes=1.0, n_docs=120, n_heldout=12, workers=1,
                           text_vocab=300, train_model="debug", seq_len=128, batch_size=4, eval_n=3,
                           min_train_steps=8, max_train_steps=8)
    summary = quickstart(cfg)
    for key in ("model", "eval", "demo", "curves"):
        assert os.path.exists(summary[key]), key
    assert os.path.isfile(os.path.join(summary["model"], "audio_codec.json"))
    # the exported model samples as its evaluation does (generate --model and the demo document show what eval measures)
    from chameleon_lite.generate.engine import sampling_defaults

    assert {k: v.temperature for k, v in sampling_defaults(summary["model"]).items()} == {"text": 0.0, "image": 0.0, "audio": 0.0}
    calib = json.load(open(os.path.join(cfg.out, "calibration.json")))
    assert calib["steps"] == 8 and calib["step_seconds"] > 0
    ev = json.load(open(os.path.join(cfg.out, "eval", "eval.json")))
    assert "text_to_image" in json.dumps(ev) and "audio" in json.dumps(ev)
    again = quickstart(cfg)
    assert again["seconds_this_run"] < summary["seconds_this_run"]
