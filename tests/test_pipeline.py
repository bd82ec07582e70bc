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
    assert calls == ["a", "b", "a", "b"]  # b read what a wrote: it runs again with its own parameters unchanged
    p.run([Stage("a", a, {"n": 2}, [str(out)]), Stage("b", b, {})])
    assert calls == ["a", "b", "a", "b"]


def test_a_stage_after_one_that_ran_again_is_cleared_and_rerun(tmp_path):
    """Changing an early stage (new tokenizers) must not leave a later stage's old output (shards of the old codes)
    standing because the later stage's own parameters did not change."""
    calls = []
    first, second = tmp_path / "first.txt", tmp_path / "second"

    def a(n):
        calls.append(f"a{n}")
        first.write_text(str(n))

    def b():
        calls.append("b")
        assert not second.exists(), "the later stage's old output was not cleared"
        second.mkdir()
        (second / "from").write_text(first.read_text())

    def stages(n):
        return [Stage("a", lambda: a(n), {"n": n}, [str(first)]), Stage("b", b, {}, [str(second)])]

    p = Pipeline(str(tmp_path), log=lambda s: None)
    p.run(stages(1))
    p.run(stages(1))
    p.run(stages(2))
    assert calls == ["a1", "b", "a2", "b"]
    assert (second / "from").read_text() == "2"


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
