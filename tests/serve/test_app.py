"""`chameleon-lite serve`'s app through Starlette's TestClient: the API's answers, its streams, its files, and its
one-line refusals of bad input."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from toy import toy_model, toy_tokenizers

from chameleon_lite.generate import GenerationConfig, Generator, Prompt
from chameleon_lite.generate.batching import BatchScheduler
from chameleon_lite.serve.app import Limits, make_app


@pytest.fixture(scope="module")
def gen():
    tk = toy_tokenizers()
    return Generator(toy_model(tk.vocab), tk)


@pytest.fixture
def served(gen, tmp_path):
    sched = BatchScheduler(gen, max_batch=2, max_queue=4, dtype="fp32")
    cfg = gen.default_config(max_new_tokens=24, dtype="fp32")
    app = make_app(sched, str(tmp_path / "served"), Limits(max_prompt_chars=200, max_upload_bytes=1 << 16), cfg)
    with TestClient(app) as client:
        yield client, tmp_path / "served", cfg
    sched.close()


def _events(body: str) -> list[tuple[str, dict]]:
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_info_and_the_page(served):
    client, _, cfg = served
    info = client.get("/api/info").json()
    assert info["max_new_tokens"] == 24 and set(info["sampling"]) == {"text", "image", "audio"}
    page = client.get("/")
    assert page.status_code == 200 and "/api/generate" in page.text and "<script" in page.text
    assert "http" not in page.text.replace("http://", "").split("<script")[0]  # nothing fetched from elsewhere


def test_an_answer_is_what_generate_makes_and_its_files_download(served, gen):
    client, out, cfg = served
    r = client.post("/api/generate", data={"prompt": "A small", "seed": "5"})
    assert r.status_code == 200, r.text
    ans = r.json()
    alone = gen.generate(Prompt(text="A small"), GenerationConfig(**{**cfg.__dict__, "seed": 5}))[0]
    assert ans["text"] == alone.reply and ans["new_tokens"] == len(alone.ids)
    assert ans["finish_reason"] == alone.settings["finish_reason"]
    doc = client.get(ans["html"])
    assert doc.status_code == 200 and "<html" in doc.text.lower()
    z = zipfile.ZipFile(io.BytesIO(client.get(ans["zip"]).content))
    assert {n.split("/")[1] for n in z.namelist()} >= {"document.html", "document.md", "document.json"}
    assert (out / f"turn_{ans['turn']:06d}" / "document.json").exists()


def test_the_stream_carries_tokens_then_done_with_the_picture(served, gen):
    client, _, cfg = served
    r = client.post("/api/generate", data={"prompt": "x", "then": "image", "stream": "1",
                                           "max_new_tokens": str(gen.image_tokens + 3)})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = _events(r.text)
    assert ev[0][0] == "start" and ev[-1][0] == "done"
    spans = [d["span"] for k, d in ev if k == "token" and "span" in d]
    assert spans[-1] == [gen.image_tokens, gen.image_tokens]
    done = ev[-1][1]
    assert len(done["images"]) == 1
    png = client.get(done["images"][0])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size[0] > 0


def test_an_uploaded_picture_is_read_and_bad_input_gets_one_line(served):
    client, out, _ = served
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, format="PNG")
    ok = client.post("/api/generate", data={"prompt": "what is this"}, files={"image": ("p.png", buf.getvalue())})
    assert ok.status_code == 200, ok.text
    assert not any(u.endswith("image_000.png") for u in ok.json()["images"])  # the prompt's picture is not an answer
    assert (out / f"turn_{ok.json()['turn']:06d}" / "image_000.png").exists()  # but the document holds it
    cases = [
        (dict(data={"prompt": "x" * 201}), 413, "at most 200"),
        (dict(data={"prompt": "a", "colour": "red"}), 400, "unknown field"),
        (dict(data={"prompt": "a", "seed": "-1"}), 400, "seed must be"),
        (dict(data={"prompt": "a", "text_temperature": "hot"}), 400, "text sampling"),
        (dict(data={"prompt": "a", "then": "video"}), 400, "then must be"),
        (dict(data={"prompt": "a", "history": "../../etc"}), 404, "no finished turn"),
        (dict(data={"prompt": "a"}, files={"image": ("bad.png", b"not a picture")}), 400, "bad.png"),
        (dict(data={"prompt": "a"}, files={"audio": ("big.wav", b"0" * (1 << 17))}), 413, "larger than"),
        (dict(data={"prompt": "a"}, files={"video": ("v.mp4", b"0000")}), 400, "unknown file field"),
        (dict(data={"prompt": "a", "seed": "x"}, files={"image": ("p.png", buf.getvalue())}), 400, "whole numbers"),
        (dict(content=b"prompt=a", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
    ]
    for kw, status, words in cases:
        r = client.post("/api/generate", **kw)
        assert r.status_code == status and words in r.json()["error"], (kw, r.status_code, r.text)
        assert "\n" not in r.json()["error"] and str(out) not in r.json()["error"]
    for path, status in [("/api/turns/999/document.html", 404), ("/api/turns/0/..%2F..%2Fsecret", 404),
                         ("/api/turns/0/model.safetensors", 404), ("/api/turns/abc.zip", 404)]:  # fmt: skip
        assert client.get(path).status_code == status, path
    assert client.post("/api/turns/12345/stop").status_code == 404
    assert not os.listdir(out / "uploads")  # an answered turn's uploads are gone, and a refused one kept none


def test_old_turns_and_stray_uploads_are_pruned(gen, tmp_path):
    out = tmp_path / "served"
    (out / "uploads").mkdir(parents=True)
    (out / "uploads" / "000000_0.png").write_bytes(b"left by a server that stopped mid-request")
    (out / "uploads" / "notes.txt").write_text("not the server's: kept")
    sched = BatchScheduler(gen, max_batch=1, dtype="fp32")
    app = make_app(sched, str(out), Limits(keep_turns=2), gen.default_config(max_new_tokens=4, dtype="fp32"))
    try:
        with TestClient(app) as client:
            turns = [
                client.post("/api/generate", data={"prompt": "a", "seed": str(k)}).json()["turn"] for k in range(4)
            ]
    finally:
        sched.close()
    assert turns == [0, 1, 2, 3]
    assert sorted(os.listdir(out)) == ["turn_000002", "turn_000003", "uploads"]
    assert os.listdir(out / "uploads") == ["notes.txt"]


def test_past_the_queue_the_answer_is_busy(gen, tmp_path):
    sched = BatchScheduler(gen, max_batch=1, max_queue=0, dtype="fp32")
    try:
        with TestClient(make_app(sched, str(tmp_path / "s"))) as client:
            r = client.post("/api/generate", data={"prompt": "a"})
            assert r.status_code == 503 and r.json()["error"].startswith("busy")
    finally:
        sched.close()


def test_an_event_stream_ends_its_request_when_the_client_leaves_at_a_yield():
    """The client leaves while the body generator waits at a `yield` (the send of its chunk is what Starlette's
    task cancels): the generator's own `finally` does not run then, the stream's `on_close` must."""
    import asyncio

    from chameleon_lite.serve.app import _EventStream

    closed, finished = [], []

    async def body():
        try:
            for i in range(1000):
                yield f"data: {i}\n\n"
        finally:
            finished.append(True)

    async def main():
        second = asyncio.Event()

        async def send(message):
            if message["type"] == "http.response.body" and message["body"].startswith(b"data: 1"):
                second.set()
                await asyncio.sleep(3600)  # a client that reads no more

        async def receive():
            await asyncio.sleep(3600)

        scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
        task = asyncio.ensure_future(_EventStream(body(), lambda: closed.append(True))(scope, receive, send))
        await second.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return list(finished)

    finished_at_cancel = asyncio.run(main())
    assert closed == [True]
    assert finished_at_cancel == []  # why on_close exists: the generator was left open at its yield


def test_a_client_that_leaves_mid_stream_cancels_its_request(gen, tmp_path, monkeypatch):
    sched = BatchScheduler(gen, max_batch=1, max_queue=2, dtype="fp32")
    jobs = []
    submit = sched.submit

    def held_submit(prompt, cfg, on_event=None):
        def held(ev):  # the request makes no progress until the client has left: it cannot finish first
            on_event(ev)
            for _ in range(1000):
                if jobs[0]._cancel:
                    break
                time.sleep(0.01)

        jobs.append(submit(prompt, cfg, on_event=held if on_event else None))
        return jobs[-1]

    monkeypatch.setattr(sched, "submit", held_submit)
    cfg = gen.default_config(max_new_tokens=200, dtype="fp32")
    try:
        with TestClient(make_app(sched, str(tmp_path / "s"), base_cfg=cfg)) as client:
            with client.stream("POST", "/api/generate", data={"prompt": "The", "stream": "1"}) as r:
                assert next(r.iter_lines()).startswith("event: start")
            jobs[0].done.wait(30)
            assert jobs[0].error == "cancelled" and sched.load()["live"] == 0
            assert not (tmp_path / "s" / "turn_000000").exists()  # nothing written for a request nobody reads
            assert client.post("/api/generate", data={"prompt": "A", "max_new_tokens": "5"}).status_code == 200
    finally:
        sched.close()
