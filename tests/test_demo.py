import json
import os

import pytest

import chameleon_lite.demo as demo
from chameleon_lite.cli import main
from chameleon_lite.errors import ConfigError
from chameleon_lite.model.io import save_model_dir
from toy import toy_model, toy_tokenizers


@pytest.fixture
def model_dir(tmp_path):
    tk = toy_tokenizers(audio=False)
    tok_dir = str(tmp_path / "tok")
    tk.text.save(tok_dir)
    tk.image.save(tok_dir)
    return save_model_dir(toy_model(tk.vocab), tk.vocab, tok_dir, str(tmp_path / "model"))


def test_ship_demo_and_generate_without_model(model_dir, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "shipped")
    monkeypatch.setattr(demo, "DEMO_DIR", out)
    with pytest.raises(ConfigError, match="no demo model"):
        demo.demo_model_dir()
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "3", "--out", str(tmp_path / "g0")]) == 1
    assert "no demo model" in capsys.readouterr().err
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"seed": 7}))
    assert main(["ship-demo", "--model", model_dir, "--recipe", str(recipe), "--command-line", "chameleon-lite quickstart",
                 "--out", out]) == 0
    rec = json.load(open(os.path.join(out, demo.RECIPE_FILE)))
    assert rec["seed"] == 7 and rec["command"] == "chameleon-lite quickstart" and rec["weights_dtype"] == "bfloat16"
    # bf16 weights: about half of the fp32 export
    assert os.path.getsize(os.path.join(out, "model.safetensors")) < 0.6 * os.path.getsize(os.path.join(model_dir, "model.safetensors"))
    assert demo.demo_model_dir() == out
    assert main(["generate", "--prompt", "Draw a", "--max-new-tokens", "6", "--out", str(tmp_path / "g"), "--quiet",
                 "--dtype", "fp32"]) == 0
    assert os.path.isfile(tmp_path / "g" / "document.json")
    with pytest.raises(ConfigError, match="MB"):
        demo.ship_demo(model_dir, {}, out=str(tmp_path / "small"), max_bytes=1000)
    assert not os.path.exists(tmp_path / "small")
