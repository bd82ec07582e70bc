from chameleon_lite.pipeline import Pipeline, Stage


def test_stages_skip_when_done_and_rerun_when_params_change(tmp_path):
    calls = []
    out = tmp_path / "a.txt"

    def a():
        calls.append("a")
        out.write_text("x")

    def b():
        calls.append("b")

    p = Pipeline(str(tmp_path), log=lambda s: None)
    p.run([Stage("a", a, {"n": 1}, [str(out)]), Stage("b", b, {})])
    p.run([Stage("a", a, {"n": 1}, [str(out)]), Stage("b", b, {})])
    assert calls == ["a", "b"]
    p.run([Stage("a", a, {"n": 2}, [str(out)]), Stage("b", b, {})])
    assert calls == ["a", "b", "a"]


def test_interrupted_stage_runs_again(tmp_path):
    calls = []

    def boom():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    p = Pipeline(str(tmp_path), log=lambda s: None)
    try:
        p.run([Stage("s", boom, {})])
    except KeyboardInterrupt:
        pass
    p.run([Stage("s", boom, {})])
    assert len(calls) == 2
