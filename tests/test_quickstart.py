import json
import os

import pytest

from chameleon_lite.errors import ConfigError
from chameleon_lite.quickstart import QuickstartConfig, quickstart


def test_config_errors():
    with pytest.raises(ConfigError, match="budget"):
        QuickstartConfig(budget_minutes=0)
    with pytest.raises(ConfigError, match="pretrain_share"):
        QuickstartConfig(pretrain_share=1.5)
    with pytest.raises(ConfigError, match="n_docs"):
        QuickstartConfig(n_docs=0)


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
    calib = json.load(open(os.path.join(cfg.out, "calibration.json")))
    assert calib["steps"] == 8 and calib["step_seconds"] > 0
    ev = json.load(open(os.path.join(cfg.out, "eval", "eval.json")))
    assert "text_to_image" in json.dumps(ev) and "audio" in json.dumps(ev)
    again = quickstart(cfg)
    assert again["seconds_this_run"] < summary["seconds_this_run"]
