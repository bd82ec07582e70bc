"""bench/quickstart_curve.py: its config levers, its refusal of a bad one, and the plot of finished points."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "quickstart_curve", os.path.join(HERE, "..", "bench", "quickstart_curve.py")
)
curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(curve)


def test_levers_set_quickstart_fields(tmp_path):
    cfg = curve.qs_config(str(tmp_path), 15, ["image_steps=1500", "compile=true", "train_model=tiny"])
    assert (cfg.image_steps, cfg.compile, cfg.train_model, cfg.budget_minutes) == (1500, True, "tiny", 15)
    assert cfg.out == os.path.join(str(tmp_path), "b15")
    with pytest.raises(SystemExit, match="quickstart field"):
        curve.qs_config(str(tmp_path), 15, ["no_such_field=1"])


def test_unfinished_budget_is_not_a_point_without_running(tmp_path):
    assert curve.point(curve.qs_config(str(tmp_path), 30, []), 200, run=False) is None


def test_plot_writes_a_png(tmp_path):
    points = [
        {
            "budget": b,
            "minutes": b * 0.9,
            "eval_n": 200,
            "stage_minutes": {s: b * 0.9 / len(curve.MODEL_STAGES) for s in curve.MODEL_STAGES},
            "tasks": {t: min(1.0, b / 60) for t in curve.TASK_ORDER},
        }
        for b in (15, 30)
    ]
    path = str(tmp_path / "curve.png")
    curve.plot(points, path, "t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
