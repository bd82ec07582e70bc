"""Continuous batching: requests that join and leave one decode loop get the documents they get alone."""

from __future__ import annotations

import threading

import pytest

from chameleon_lite.errors import UserError
from chameleon_lite.generate import GenerationConfig, Prompt, SamplingSettings
from chameleon_lite.generate.batching import BatchScheduler, Busy

FP32 = dict(dtype="fp32")


def _requests(gen):
    return [
        (Prompt(text="A small"), GenerationConfig(max_new_tokens=20, seed=3, **FP32)),
        (Prompt(text="Play C4 then"), GenerationConfig(max_new_tokens=gen.image_tokens + 4, seed=5, **FP32)),
        (
            Prompt(text="x", then="image"),
            GenerationConfig(
                max_new_tokens=gen.image_tokens + 2, seed=7, image=SamplingSettings(cfg_scale=2.0), **FP32
            ),
        ),  # fmt: skip
        (Prompt(text="The"), GenerationConfig(max_new_tokens=30, seed=1, **FP32)),
        (Prompt(text="a b"), GenerationConfig(max_new_tokens=12, seed=9, **FP32)),
    ]


def test_requests_in_one_loop_get_their_own_documents(gen):
    reqs = _requests(gen)
    alone = [gen.generate(p, c)[0] for p, c in reqs]  # (in inference mode, as the scheduler's thread must be too)
    sched = BatchScheduler(gen, max_batch=2, max_queue=8, dtype="fp32")
    try:
        events = {k: [] for k in range(len(reqs))}
        jobs = [sched.submit(p, c, on_event=events[k].append) for k, (p, c) in enumerate(reqs)]
        docs = [j.result(timeout=120) for j in jobs]
    finally:
        sched.close()
    assert [d.ids for d in docs] == [d.ids for d in alone]
    assert [d.settings["finish_reason"] for d in docs] == [d.settings["finish_reason"] for d in alone]
    assert all([e.id for e in events[k]] == docs[k].ids for k in events)  # each stream is its own request's
    assert sched.steps < sum(len(d.ids) for d in docs)  # rows were decoded together, not one request after another


def test_a_full_queue_answers_busy_and_bad_requests_fail_alone(gen):
    gate = threading.Event()
    sched = BatchScheduler(gen, max_batch=1, max_queue=1, dtype="fp32")
    try:
        first = sched.submit(Prompt(text="The"), GenerationConfig(max_new_tokens=200, **FP32),
                             on_event=lambda e: gate.wait(5))  # fmt: skip
        while first.started is None:
            first.done.wait(0.01)
        waiting = sched.submit(Prompt(text="a b c d " * 200), GenerationConfig(**FP32))  # too long: fails at admission
        with pytest.raises(Busy, match="busy: 1 requests are waiting"):
            sched.submit(Prompt(text="A"), GenerationConfig(**FP32))
        first.stop()
        gate.set()
        doc = first.result(timeout=60)
        assert doc.settings["finish_reason"] == "stop" and len(doc.ids) < 200
        with pytest.raises(UserError, match="context is 256 tokens"):
            waiting.result(timeout=60)
        ok = sched.submit(Prompt(text="A"), GenerationConfig(max_new_tokens=5, **FP32))
        assert len(ok.result(timeout=60).ids) <= 5
        gone = sched.submit(Prompt(text="A"), GenerationConfig(max_new_tokens=100, **FP32))
        gone.cancel()
        with pytest.raises(UserError, match="cancelled"):
            gone.result(timeout=60)
        assert sched.load() == {"live": 0, "waiting": 0, "max_batch": 1}
    finally:
        gate.set()
        sched.close()


def test_bad_scheduler_settings_and_a_closed_scheduler(gen):
    for kw in (dict(max_batch=0), dict(max_queue=-1)):
        with pytest.raises(UserError, match="max_batch must be >= 1 and max_queue >= 0"):
            BatchScheduler(gen, dtype="fp32", **kw)
    sched = BatchScheduler(gen, max_batch=1, dtype="fp32")
    with pytest.raises(UserError, match="already running"):  # its own thread runs the loop
        sched.run()
    sched.close()
    with pytest.raises(UserError, match="the scheduler is closed"):
        sched.submit(Prompt(text="A"), GenerationConfig(**FP32))


def test_the_loop_runs_in_the_callers_thread_until_closed(gen):
    """thread=False: the caller runs the loop (serve runs it in the thread that loaded the model); it serves
    requests submitted from other threads, refuses a second loop, and close() from another thread ends it."""
    req = (Prompt(text="A small"), GenerationConfig(max_new_tokens=8, seed=3, **FP32))
    alone = gen.generate(*req)[0]
    sched = BatchScheduler(gen, max_batch=2, dtype="fp32", thread=False)
    got, errors = [], []

    def client() -> None:
        try:
            got.append(sched.submit(*req).result(timeout=60))
            with pytest.raises(UserError, match="already running"):
                sched.run()
        except BaseException as e:  # shown below
            errors.append(e)
        finally:
            sched.close()

    t = threading.Thread(target=client)
    t.start()
    sched.run()  # returns once the client closed the scheduler
    t.join(60)
    assert not errors and [d.ids for d in got] == [alone.ids]
    with pytest.raises(UserError, match="the scheduler is closed"):
        sched.submit(*req)
