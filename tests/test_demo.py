import json
import os
import signal
import subprocess
import sys
import time

import pytest
from toy import toy_model, toy_tokenizers

import chameleon_lite.demo as demo
from chameleon_lite import bundle
from chameleon_lite.cli import main
from chameleon_lite.errors import ConfigError
from chameleon_lite.model.io import save_model_dir

TRAIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train")  # the stage scripts


def _load_recipe_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_recipe_script", os.path.join(TRAIN_DIR, "recipe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe_script = _load_recipe_script()  # train/recipe.py: RECIPE.json of the demo model's training stages


@pytest.fixture
def model_dir(tmp_path):
    tk = toy_tokenizers(audio=False)
    tok_dir = str(tmp_path / "tok")
    tk.text.save(tok_dir)
    tk.image.save(tok_dir)
    return save_model_dir(toy_model(tk.vocab), tk.vocab, tok_dir, str(tmp_path / "model"))


def test_ship_demo_and_generate_without_model(model_dir, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "shipped")
    monkeypatch.setattr(bundle, "DEMO_DIR", out)
    with pytest.raises(ConfigError, match="no demo model"):
        bundle.demo_model_dir()
    assert main(["generate", "--prompt", "x", "--max-new-tokens", "3", "--out", str(tmp_path / "g0")]) == 1
    assert "no demo model" in capsys.readouterr().err
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"seed": 7}))
    assert (
        main(
            [
                "ship-demo",
                "--model",
                model_dir,
                "--recipe",
                str(recipe),
                "--command-line",
                "chameleon-lite quickstart",
                "--out",
                out,
            ]
        )
        == 0
    )
    rec = json.load(open(os.path.join(out, demo.RECIPE_FILE)))
    assert rec["seed"] == 7 and rec["command"] == "chameleon-lite quickstart" and rec["weights_dtype"] == "bfloat16"
    # bf16 weights: about half of the fp32 export
    assert os.path.getsize(os.path.join(out, "model.safetensors")) < 0.6 * os.path.getsize(
        os.path.join(model_dir, "model.safetensors")
    )
    assert bundle.demo_model_dir() == out
    # generate's defaults for the shipped model: the sampling its recorded evaluation used
    from chameleon_lite.eval.harness import EvalConfig, sampling_settings
    from chameleon_lite.generate import Generator

    assert Generator.from_dir(out).sampling == sampling_settings(EvalConfig(out, str(tmp_path)))
    assert (
        main(
            [
                "generate",
                "--prompt",
                "Draw a",
                "--max-new-tokens",
                "6",
                "--out",
                str(tmp_path / "g"),
                "--quiet",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    assert os.path.isfile(tmp_path / "g" / "document.json")
    with pytest.raises(ConfigError, match="MB"):
        demo.ship_demo(model_dir, {}, out=str(tmp_path / "small"), max_bytes=1000)
    assert not os.path.exists(tmp_path / "small")


def test_exported_and_shipped_files_are_readable_by_everyone_the_umask_allows(tmp_path):
    tk = toy_tokenizers(audio=False)
    old = os.umask(0o022)
    try:
        tok_dir = str(tmp_path / "tok")
        tk.text.save(tok_dir)
        tk.image.save(tok_dir)
        model = save_model_dir(toy_model(tk.vocab), tk.vocab, tok_dir, str(tmp_path / "model"))
        shipped = demo.ship_demo(model, {}, out=str(tmp_path / "shipped"))
    finally:
        os.umask(old)
    for folder in (tok_dir, model, shipped):
        modes = {f: oct(os.stat(os.path.join(folder, f)).st_mode & 0o777) for f in os.listdir(folder)}
        assert any(f.endswith(".safetensors") for f in modes)
        assert set(modes.values()) == {oct(0o644)}, modes


def test_failed_export_keeps_the_earlier_one_and_leaves_no_temp_folder(model_dir, monkeypatch):
    tk = toy_tokenizers(audio=False)
    tok_dir = os.path.join(os.path.dirname(model_dir), "tok")
    before = {f: open(os.path.join(model_dir, f), "rb").read() for f in os.listdir(model_dir)}

    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(type(tk.vocab), "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(toy_model(tk.vocab, seed=1), tk.vocab, tok_dir, model_dir)
    assert {f: open(os.path.join(model_dir, f), "rb").read() for f in os.listdir(model_dir)} == before
    assert sorted(os.listdir(os.path.dirname(model_dir))) == ["model", "tok"]


def _write(path, obj, lines=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if lines:
            f.writelines(json.dumps(o) + "\n" for o in obj)
        else:
            json.dump(obj, f)


def test_recipe_of_the_quickstart_alone(tmp_path, capsys):
    first = str(tmp_path / "demo")
    _write(
        os.path.join(first, "quickstart.json"),
        {"config": {"seed": 3, "budget_minutes": 240.0}, "stage_seconds_this_run": {"pretrain": 1.0}},
    )
    for name, seconds in (("corpus", 60.0), ("pretrain", 600.0)):  # every stage once, even after a resume
        _write(os.path.join(first, f".stage-{name}.done"), {"params": {}, "seconds": seconds})
    _write(os.path.join(first, "calibration.json"), {"steps": 10, "pretrain_minutes": 11.0})
    _write(os.path.join(first, "stage_seconds.jsonl"), [{"stage": "eval500", "seconds": 120.0}], lines=True)
    with pytest.raises(ConfigError, match="eval500.*evaluation not found"):
        recipe_script.recipe(first)
    _write(
        os.path.join(first, "eval500", "eval.json"),
        {
            "tasks": {"text_to_image": {"n": 500, "exact": 0.9, "samples": []}},
            "tokenizers": {},
            "perplexity": {},
            "seconds": 9.0,
        },
    )
    rec = recipe_script.recipe(first, machine="m")
    q = rec["stages"]["quickstart"]
    assert q["command"] == f"chameleon-lite quickstart --out {first} --budget-minutes 240 --seed 3"
    assert q["stage_seconds"] == {"corpus": 60.0, "pretrain": 600.0, "eval500": 120.0} and q["minutes"] == 13.0
    assert q["pretraining"] == {"steps": 10, "pretrain_minutes": 11.0} and rec["stages"]["continued"] == []
    assert rec["eval_command"] == (
        f"chameleon-lite eval --model {first}/model --n 500 --batch 32 --samples 6 "
        f"--shards {first}/shards/val --out {first}/eval500"
    )
    assert rec["eval"]["tasks"] == {"text_to_image": {"n": 500, "exact": 0.9}} and rec["total_minutes"] == 13.0
    assert recipe_script.main([first]) == 0 and json.loads(capsys.readouterr().out)["seed"] == 3
    _write(os.path.join(first, "quickstart.json"), {"stage_seconds_this_run": {}})  # no config
    assert recipe_script.main([first]) == 1 and "malformed (KeyError: 'config')" in capsys.readouterr().err


def test_continued_recipe_collects_every_stage(tmp_path, capsys):
    first, second = str(tmp_path / "demo"), str(tmp_path / "demo2")
    _write(os.path.join(first, "quickstart.json"), {"config": {"seed": 0, "budget_minutes": 80.0}})
    for name, seconds in (("corpus", 30.0), ("pretrain", 90.0)):
        _write(os.path.join(first, f".stage-{name}.done"), {"params": {}, "seconds": seconds})
    _write(os.path.join(second, "run", "run.json"), {"train": {"steps": 3, "init_from": f"{first}/model"}})
    _write(
        os.path.join(second, "run", "metrics.jsonl"),
        [
            {"step": 0, "loss": 1.0, "tokens": 100, "tokens_per_s": 10.0, "step_time": 10.0},
            {"step": 1, "loss": 0.9, "tokens": 100, "tokens_per_s": 30.0, "step_time": 3.3},
            {"step": 1, "val_loss": 0.91234567},
            {"step": 2, "loss": 0.8, "tokens": 100, "tokens_per_s": 20.0, "step_time": 5.0},
        ],
        lines=True,
    )
    _write(
        os.path.join(second, "stage_seconds.jsonl"),
        [
            {"stage": "corpus", "seconds": 6.0},
            {"stage": "pretrain", "seconds": 20.0},
            {"stage": "pretrain", "seconds": 4.0},
        ],
        lines=True,
    )
    _write(
        os.path.join(second, "eval", "eval.json"),
        {
            "tasks": {"text_to_image": {"n": 5, "exact": 0.4, "samples": [1, 2]}},
            "tokenizers": {},
            "perplexity": {"text": 2.0},
            "seconds": 9.0,
        },
    )
    _write(
        os.path.join(second, "corpus", "corpus.json"),
        {"n": 10, "seed": 100, "config": {"task_weights": {"interleaved": 0.5}}},
    )
    rec = recipe_script.recipe(first, second, machine="test machine")
    assert rec["machine"] == "test machine" and rec["seed"] == 0 and rec["command"] == "bash train/demo_recipe.sh"
    q, (c,) = rec["stages"]["quickstart"], rec["stages"]["continued"]
    assert (
        q["command"] == f"chameleon-lite quickstart --out {first} --budget-minutes 80 --seed 0" and q["minutes"] == 2.0
    )
    assert c["stage_seconds"] == {"corpus": 6.0, "pretrain": 24.0}  # a resumed stage adds up
    assert c["steps"] == 3 and c["tokens"] == 300 and c["median_tokens_per_second"] == 20.0
    assert c["val_loss"] == [{"step": 1, "val_loss": 0.9123}] and c["train"]["init_from"] == f"{first}/model"
    assert rec["total_minutes"] == 2.5
    assert rec["eval"]["tasks"] == {"text_to_image": {"n": 5, "exact": 0.4}}  # samples left out
    assert c["out"] == second and c["eval_exact"] == {"text_to_image": 0.4}
    assert c["corpus"] == {"n": 10, "seed": 100, "task_weights": {"interleaved": 0.5}, "image_size": None}
    assert (
        recipe_script.main([first, second, "--machine", "m"]) == 0
        and json.loads(capsys.readouterr().out)["machine"] == "m"
    )

    # a third stage continues from the second's model; the recipe's eval is the last stage's, the times add up
    third = str(tmp_path / "demo3")
    _write(os.path.join(third, "run", "run.json"), {"train": {"steps": 1, "init_from": f"{second}/model"}})
    _write(
        os.path.join(third, "run", "metrics.jsonl"),
        [{"step": 0, "loss": 0.7, "tokens": 50, "tokens_per_s": 40.0, "step_time": 1.0}],
        lines=True,
    )
    _write(os.path.join(third, "stage_seconds.jsonl"), [{"stage": "pretrain", "seconds": 30.0}], lines=True)
    _write(
        os.path.join(third, "eval", "eval.json"),
        {"tasks": {"text_to_image": {"n": 5, "exact": 0.8}}, "tokenizers": {}, "perplexity": {}, "seconds": 9.0},
    )
    rec = recipe_script.recipe(first, second, third, machine="m")
    assert [c["out"] for c in rec["stages"]["continued"]] == [second, third] and rec["total_minutes"] == 3.0
    assert rec["eval"]["tasks"]["text_to_image"]["exact"] == 0.8 and f"--model {third}/model" in rec["eval_command"]
    os.remove(os.path.join(third, "eval", "eval.json"))
    assert recipe_script.main([first, second, third]) == 1
    assert "eval.json: evaluation not found" in capsys.readouterr().err


def test_extend_a_shipped_recipe_with_one_more_stage(tmp_path, capsys):
    """A train/demo_continue.sh stage added to a shipped model's recipe: the stages before keep their records, the
    commands chain with the code version of each, the eval is the new stage's, the minutes add up."""
    base = {
        "source": "/x",
        "bytes": 1,
        "weights_dtype": "bfloat16",
        "python": "3",
        "torch": "2",
        "command": "bash train/demo_recipe.sh",
        "commit": "abc",
        "seed": 0,
        "machine": "old machine",
        "stages": {"quickstart": {"minutes": 75.0}, "continued": [{"out": "runs/demo2"}]},
        "total_minutes": 179.0,
        "eval": {"tasks": {"text_to_image": {"n": 500, "exact": 0.4}}},
    }
    out = str(tmp_path / "demo4")
    _write(
        os.path.join(out, "run", "run.json"),
        {"train": {"steps": 2, "init_from": "runs/demo3_model", "val_data": f"{out}/shards/val"}},
    )
    _write(
        os.path.join(out, "run", "metrics.jsonl"),
        [
            {"step": 0, "loss": 1.0, "tokens": 10, "tokens_per_s": 5.0, "step_time": 2.0},
            {"step": 1, "loss": 0.9, "tokens": 10, "tokens_per_s": 5.0, "step_time": 2.0},
        ],
        lines=True,
    )
    _write(os.path.join(out, "stage_seconds.jsonl"), [{"stage": "pretrain", "seconds": 60.0}], lines=True)
    _write(
        os.path.join(out, "corpus", "corpus.json"),
        {"n": 4, "seed": 300, "config": {"task_weights": {}, "image_size": 64}},
    )
    with pytest.raises(ConfigError, match="no evaluation"):
        recipe_script.extend(base, out, "bash train/demo_continue.sh a b", "def", "the model of abc", machine="m")
    _write(
        os.path.join(out, "eval", "eval.json"),
        {
            "tasks": {"text_to_image": {"n": 500, "exact": 0.6, "samples": []}},
            "tokenizers": {},
            "perplexity": {},
            "seconds": 1.0,
        },
    )
    rec = recipe_script.extend(base, out, "bash train/demo_continue.sh a b", "def", "the model of abc", machine="m")
    assert "source" not in rec and "bytes" not in rec and rec["seed"] == 0
    assert rec["commands"] == [
        {"command": "bash train/demo_recipe.sh", "commit": "abc", "machine": "old machine"},
        {"command": "bash train/demo_continue.sh a b", "commit": "def", "machine": "m"},
    ]
    assert rec["command"] == (
        "git checkout abc && bash train/demo_recipe.sh && git checkout def && bash train/demo_continue.sh a b"
    )
    (old, new) = rec["stages"]["continued"]
    assert old == {"out": "runs/demo2"} and rec["stages"]["quickstart"] == {"minutes": 75.0}
    assert new["from_model"] == "the model of abc" and new["commit"] == "def" and new["corpus"]["image_size"] == 64
    assert rec["total_minutes"] == 180.0 and rec["eval"]["tasks"]["text_to_image"] == {"n": 500, "exact": 0.6}
    assert (
        rec["eval_command"].startswith(f"chameleon-lite eval --model {out}/model --n 500")
        and f"--shards {out}/shards/val" in rec["eval_command"]
    )
    # a second extension chains on the first's commands
    again = recipe_script.extend(rec, out, "bash train/demo_continue.sh c d", "ghi", "x", machine="m")
    assert [c["commit"] for c in again["commands"]] == ["abc", "def", "ghi"] and len(again["stages"]["continued"]) == 3
    with pytest.raises(ConfigError, match="no 'stages'"):
        recipe_script.extend({"total_minutes": 1.0}, out, "c", "d", "e")
    recipe_file = tmp_path / "RECIPE.json"
    recipe_file.write_text(json.dumps(base))
    assert (
        recipe_script.main(
            [
                out,
                "--extend",
                str(recipe_file),
                "--command",
                "c",
                "--commit",
                "d",
                "--from-model",
                "e",
                "--machine",
                "m",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["commands"][-1] == {"command": "c", "commit": "d", "machine": "m"}
    assert recipe_script.main([out, "--extend", str(recipe_file)]) == 1
    assert "needs --command, --commit and --from-model" in capsys.readouterr().err


def test_extend_with_a_decoder_fine_tuning_stage(tmp_path):
    """A train/demo_decoders.sh stage (no training run: two tokenizer runs) is recorded with both runs' summaries;
    the eval command names the shards its evaluation used."""
    base = {
        "command": "bash train/demo_recipe.sh",
        "commit": "abc",
        "seed": 0,
        "machine": "m",
        "stages": {"quickstart": {"minutes": 75.0}, "continued": []},
        "total_minutes": 75.0,
    }
    out = str(tmp_path / "demo8")
    for m in ("image", "audio"):
        _write(
            os.path.join(out, m, "run", "summary.json"),
            {
                "steps": 3,
                "train_seconds": 6.0,
                "threads": 2,
                "last": {"step": 3},
                "train_config": {"finetune_decoder": "x"},
                "manifest": "ignored",
            },
        )
    _write(
        os.path.join(out, "stage_seconds.jsonl"),
        [{"stage": "image-decoder", "seconds": 30.0}, {"stage": "audio-decoder", "seconds": 30.0}],
        lines=True,
    )
    _write(
        os.path.join(out, "eval", "eval.json"),
        {"config": {"shards": "runs/demo7/shards/val"}, "tasks": {"text_to_audio": {"n": 500, "exact": 0.8}}},
    )
    rec = recipe_script.extend(base, out, "bash train/demo_decoders.sh a b", "def", "the model of abc", machine="m")
    (stage,) = rec["stages"]["continued"]
    assert stage["kind"] == "decoder fine-tuning" and stage["minutes"] == 1.0 and rec["total_minutes"] == 76.0
    assert (
        stage["image_decoder"]
        == stage["audio_decoder"]
        == {
            "steps": 3,
            "train_seconds": 6.0,
            "threads": 2,
            "last": {"step": 3},
            "train_config": {"finetune_decoder": "x"},
        }
    )
    assert (
        "--shards runs/demo7/shards/val" in rec["eval_command"]
        and rec["eval"]["tasks"]["text_to_audio"]["exact"] == 0.8
    )


def test_decoders_script_without_its_arguments_prints_its_usage():

    script = os.path.join(TRAIN_DIR, "demo_decoders.sh")
    r = subprocess.run(["bash", script, "model"], capture_output=True, text=True)
    assert r.returncode == 2 and "FROM_MODEL OUT SEED IMAGE_STEPS AUDIO_STEPS [VAL_SHARDS" in r.stderr


def test_decoders_script_refuses_a_stage_with_nothing_to_fine_tune(tmp_path):

    script = os.path.join(TRAIN_DIR, "demo_decoders.sh")
    out = tmp_path / "stage"
    r = subprocess.run(["bash", script, "model", str(out), "1", "0", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "IMAGE_STEPS and AUDIO_STEPS are both 0: nothing to fine-tune" in r.stderr
    assert not (out / "corpus").exists()


def test_continue_script_without_its_arguments_prints_its_usage():

    script = os.path.join(TRAIN_DIR, "demo_continue.sh")
    r = subprocess.run(["bash", script, "model", "tok"], capture_output=True, text=True)
    assert r.returncode == 2 and "FROM_MODEL TOKENIZERS OUT SEED LR WARMUP STEPS WEIGHTS" in r.stderr


def _timer_script(tmp_path, body: str) -> str:
    timer = os.path.join(TRAIN_DIR, "stage_timer.sh")
    script = tmp_path / "stage.sh"
    script.write_text(f"set -euo pipefail\nout={tmp_path}\n. {timer}\n{body}\necho after\n")
    return str(script)


def _timer_log(tmp_path) -> list[dict]:
    return [json.loads(line) for line in open(tmp_path / "stage_seconds.jsonl")]


def test_stage_timer_logs_failed_steps(tmp_path):
    """train/stage_timer.sh: a step that fails is logged with its exit status, and the script stops there."""

    r = subprocess.run(
        ["bash", _timer_script(tmp_path, "timed ok true\n[ -f nope ] || timed bad bash -c 'exit 3'")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 3 and "after" not in r.stdout
    log = _timer_log(tmp_path)
    assert [(x["stage"], x.get("exit_status")) for x in log] == [("ok", None), ("bad", 3)]


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_stage_timer_logs_stopped_steps(tmp_path, sig, status):
    """A step stopped by Ctrl-C or a kill is logged with the time it ran, so that a resumed stage's recorded time
    includes the stopped attempt."""
    started = tmp_path / "started"
    # the waiting process marks itself started, so the signal cannot fall between a marker command and the wait
    step = f"{sys.executable} -c 'import pathlib, time; pathlib.Path(\"{started}\").touch(); time.sleep(30)'"
    p = subprocess.Popen(
        ["bash", _timer_script(tmp_path, f"timed pretrain {step}")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: a shell's background job (pytest run with `&`) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    t0 = time.monotonic()
    while not started.exists():
        assert time.monotonic() - t0 < 20 and p.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(p.pid, getattr(signal, sig))  # the whole group, as a terminal's Ctrl-C or a job's kill does
    out, _ = p.communicate(timeout=20)
    assert p.returncode == status and "after" not in out
    (rec,) = _timer_log(tmp_path)
    assert rec["stage"] == "pretrain" and rec["exit_status"] == status and 0.3 <= rec["seconds"] < 25


def test_ship_demo_keeps_the_prompt_format(model_dir, tmp_path):
    """A model trained on conversations stays one when shipped: its generation.json keeps "format": "chat"."""
    from chameleon_lite.generate import Generator

    bundle.set_prompt_format(model_dir, "chat")
    out = demo.ship_demo(model_dir, {}, out=str(tmp_path / "shipped"))
    assert Generator.from_dir(out).format == "chat"
    assert json.load(open(os.path.join(out, bundle.GENERATION_FILE)))["text"]["temperature"] == 0.0
    bundle.set_prompt_format(model_dir, "plain")
    assert "format" not in json.load(open(os.path.join(model_dir, bundle.GENERATION_FILE)))
    with pytest.raises(ConfigError, match="format must be one of"):
        bundle.set_prompt_format(model_dir, "poem")


def test_extend_with_a_held_out_eval(tmp_path):
    """A stage whose eval is the held-out suite records that eval's command (its corpora and guidance sweep) and its
    overlap checks without their examples."""
    base = {"command": "bash train/demo_recipe.sh", "commit": "abc", "stages": {"continued": []}, "total_minutes": 1.0}
    out = str(tmp_path / "chat")
    _write(os.path.join(out, "run", "run.json"), {"train": {"steps": 1, "init_from": "m"}})
    _write(os.path.join(out, "run", "metrics.jsonl"), [{"step": 0, "loss": 1.0, "tokens": 10}], lines=True)
    ev = {
        "suite": "heldout",
        "config": {"n": 500, "batch": 32, "corpora": ["c/manifest.jsonl"], "cfg_scales": [1.0, 1.5]},
        "tasks": {"caption": {"n": 500, "exact": 0.9}},
        "overlap": [{"manifest": "c/manifest.jsonl", "clean": True, "examples": {"x": [1]}}],
        "cfg_sweep": {"best": {"text_to_image": 1.5}},
        "recipe_seeds": {"seeds": [0], "eval_seed_used": False},
        "seconds": 3.0,
    }
    _write(os.path.join(out, "eval", "eval.json"), ev)
    rec = recipe_script.extend(base, out, "bash train/demo_continue.sh a b", "def", "the shipped model", machine="m")
    assert rec["eval_command"] == (
        f"chameleon-lite eval --model {out}/model --n 500 --batch 32 --samples 6 --corpus c/manifest.jsonl "
        f"--cfg-sweep 1,1.5 --out {out}/eval"
    )
    assert rec["eval"]["suite"] == "heldout" and rec["eval"]["overlap"] == [
        {"manifest": "c/manifest.jsonl", "clean": True}
    ]
    assert rec["eval"]["tasks"]["caption"]["exact"] == 0.9 and rec["eval"]["cfg_sweep"]["best"]["text_to_image"] == 1.5
