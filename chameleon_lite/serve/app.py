"""The ASGI app of `chameleon-lite serve` (Starlette): the page, the API and the turn files.

API (docs/serve.md):
    GET  /api/info                     the model, its sampling defaults, the limits and the load
    POST /api/generate                 multipart form: prompt, image/audio files, options; ``stream=1`` answers
                                       server-sent events (token, done, error), else one JSON object
    POST /api/turns/{id}/stop          end a generation now, keeping what it made
    GET  /api/turns/{id}/{file}        a file of a finished turn (document.html/.md/.json, PNG, WAV)
    GET  /api/turns/{id}.zip           the whole turn folder

Every answer to bad input is 4xx with one line (``{"error": ...}``); past the queue bound, 503 "busy". Uploads are
written under the server's own ``--out`` folder only; a turn id is a number the server gave out, and a file name must
be one the turn folder holds, so no request reaches another path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import shutil
import socket
import threading
import time
import zipfile
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from chameleon_lite.data.audio_files import read_audio_file
from chameleon_lite.data.image_files import read_image_file
from chameleon_lite.errors import UserError
from chameleon_lite.generate import Prompt, load_history
from chameleon_lite.generate.batching import BatchScheduler, Busy
from chameleon_lite.generate.engine import THEN

OPTIONS = ("prompt", "then", "mode", "seed", "max_new_tokens", "history", "stream")
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "cfg_scale", "repetition_penalty")
SAMPLING_FIELDS = tuple(f"{k}_{s}" for k in ("text", "image", "audio") for s in SAMPLING)
FIELDS = (*OPTIONS, *SAMPLING_FIELDS, "image", "audio")  # what POST /api/generate reads (image, audio: files)
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TURN = re.compile(r"^[0-9]{1,9}$")  # a turn number in a URL
TURN_DIR = re.compile(r"^turn_([0-9]{6,9})$")  # its folder under --out
UPLOAD = re.compile(r"^([0-9]{6,9})_[0-9]+\.[a-z0-9]{1,5}$")  # an uploaded file under --out/uploads, by turn
FILE = re.compile(r"^(document\.(html|md|json)|image_[0-9]{3}\.png|audio_[0-9]{3}\.wav)$")


@dataclasses.dataclass
class Limits:
    max_prompt_chars: int = 4000
    max_upload_bytes: int = 8 << 20
    max_files: int = 4
    max_new_tokens: int = 2048
    keep_turns: int = 500


class _Bad(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Server:
    """The state behind the routes: the scheduler, the output folder and the turn counter."""

    def __init__(self, scheduler: BatchScheduler, out: str, limits: Limits, base_cfg) -> None:
        self.sched, self.out, self.limits, self.base = scheduler, os.path.abspath(out), limits, base_cfg
        os.makedirs(os.path.join(self.out, "uploads"), exist_ok=True)
        self._next = max(self._turns(), default=-1) + 1
        self._lock = threading.Lock()
        self.jobs: dict[int, Any] = {}  # live turns only (removed when they finish)

    def new_turn(self) -> int:
        with self._lock:
            n, self._next = self._next, self._next + 1
        return n

    def turn_dir(self, n: int) -> str:
        return os.path.join(self.out, f"turn_{n:06d}")

    def _turns(self) -> list[int]:
        return sorted(int(m[1]) for n in os.listdir(self.out) if (m := TURN_DIR.match(n)))

    def uploads(self) -> list[tuple[int, str]]:
        """(turn, path) of every uploaded file under ``--out/uploads``."""
        folder = os.path.join(self.out, "uploads")
        return [(int(m[1]), os.path.join(folder, n)) for n in sorted(os.listdir(folder)) if (m := UPLOAD.match(n))]

    def drop_uploads(self, turn: int) -> None:
        for n, path in self.uploads():
            if n == turn:
                os.remove(path)

    def prune(self) -> None:
        """Keep the newest ``keep_turns`` turns: their folders and the files uploaded with them (all written by this
        server). A turn's uploads are deleted when it ends (its document holds the prompt's media); uploads left by an
        earlier server that stopped mid-request go once they are older than the oldest turn kept."""
        turns = self._turns()
        cut = max(0, len(turns) - self.limits.keep_turns)
        for n in turns[:cut]:
            shutil.rmtree(self.turn_dir(n), ignore_errors=True)
        oldest = turns[cut] if cut < len(turns) else self._next
        for n, path in self.uploads():
            if n < oldest and n not in self.jobs:
                os.remove(path)

    # ---- a request -> Prompt + config ----------------------------------------------------------------
    async def parse(self, request: Request, turn: int) -> tuple[Prompt, Any, bool]:
        lim = self.limits
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > lim.max_files * lim.max_upload_bytes + (1 << 20):
            raise _Bad(f"request too large ({int(size)} bytes; at most {lim.max_files} files of "
                       f"{lim.max_upload_bytes >> 20} MiB)", 413)  # fmt: skip
        ctype = request.headers.get("content-type", "")
        files: list[tuple[str, Any]] = []
        if ctype.startswith("application/json"):
            try:
                form = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise _Bad(f"the request body is not valid JSON ({e})") from None
            if not isinstance(form, dict):
                raise _Bad("the JSON request body must be an object")
        elif ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            try:
                raw = await request.form(max_files=lim.max_files, max_fields=64)
            except Exception as e:  # starlette's MultiPartException / bad encodings
                raise _Bad(f"the form cannot be read ({e})") from None
            form = {k: v for k, v in raw.items() if isinstance(v, str)}
            files = [(k, v) for k, v in raw.multi_items() if not isinstance(v, str)]
        else:
            raise _Bad("send the request as multipart/form-data (with files) or application/json", 415)
        unknown = set(form) - set(OPTIONS) - set(SAMPLING_FIELDS)
        if unknown:
            raise _Bad(f"unknown field(s) {sorted(unknown)}; see GET /api/info for the options")
        text = str(form.get("prompt", ""))
        if len(text) > lim.max_prompt_chars:
            raise _Bad(f"the prompt is {len(text)} characters; at most {lim.max_prompt_chars}", 413)
        images, audios = [], []
        for k, (field, up) in enumerate(files):
            if field not in ("image", "audio"):
                raise _Bad(f"unknown file field {field!r}; attach pictures as 'image' and clips as 'audio'")
            data = await up.read(lim.max_upload_bytes + 1)
            if len(data) > lim.max_upload_bytes:
                raise _Bad(f"{up.filename}: larger than {lim.max_upload_bytes >> 20} MiB", 413)
            ext = os.path.splitext(up.filename or "")[1].lower()
            ext = ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".bin"
            path = os.path.join(self.out, "uploads", f"{turn:06d}_{k}{ext}")
            with open(path, "wb") as f:
                f.write(data)
            await run_in_threadpool(_check_media, path, field, up.filename or f"{field} {k + 1}")
            (images if field == "image" else audios).append(path)
        cfg = self.base
        try:
            seed = int(form.get("seed", cfg.seed))
            n = int(form.get("max_new_tokens", cfg.max_new_tokens))
        except (TypeError, ValueError):
            raise _Bad("seed and max_new_tokens must be whole numbers") from None
        if not 0 <= seed < 2**63 or not 1 <= n <= lim.max_new_tokens:
            raise _Bad(f"seed must be in [0, 2^63) and max_new_tokens in [1, {lim.max_new_tokens}]")
        kinds = {}
        for kind in ("text", "image", "audio"):
            given = {s: form[f"{kind}_{s}"] for s in SAMPLING if f"{kind}_{s}" in form}
            try:
                given = {s: (int(v) if s == "top_k" else float(v)) for s, v in given.items()}
                kinds[kind] = dataclasses.replace(getattr(cfg, kind), **given)
            except (TypeError, ValueError, UserError) as e:
                raise _Bad(f"{kind} sampling: {e}") from None
        try:
            cfg = dataclasses.replace(cfg, seed=seed, max_new_tokens=n, **kinds)
        except UserError as e:
            raise _Bad(str(e)) from None
        then = form.get("then") or None
        if then not in THEN:
            raise _Bad(f"then must be one of {[t for t in THEN if t]}")
        mode = form.get("mode") or ("chat" if self.sched.gen.format == "chat" else "plain")
        if mode not in ("chat", "plain"):
            raise _Bad("mode must be chat or plain")
        history: list[int] = []
        if form.get("history"):
            h = str(form["history"])
            if not TURN.match(h) or not os.path.isdir(self.turn_dir(int(h))):
                raise _Bad(f"history: no finished turn {h!r} on this server", 404)
            if mode != "chat":
                raise _Bad("history continues a conversation: it needs mode=chat")
            try:
                history = load_history(self.turn_dir(int(h)), self.sched.gen.vocab)
            except UserError as e:
                raise _Bad(str(e)) from None
        try:
            prompt = Prompt(text=text, images=images, audios=audios, then=then, chat=mode == "chat", history=history)
        except UserError as e:
            raise _Bad(str(e)) from None
        stream = str(form.get("stream", "0")).lower() in ("1", "true", "yes")
        return prompt, cfg, stream


def _check_media(path: str, kind: str, name: str) -> None:
    """Decode an upload the way `generate` reads its files: a corrupt or wrong file is one line naming it."""
    try:
        (read_image_file if kind == "image" else read_audio_file)(path)
    except UserError as e:
        os.remove(path)
        raise _Bad(str(e).replace(path, name)) from None


class _EventStream(StreamingResponse):
    """A server-sent event stream that runs `on_close` however the response ends.

    Starlette does not close the body generator when the client leaves while the generator waits at a `yield`
    (the send of its last chunk is what gets cancelled), so the generator's own `finally` would run only when the
    garbage collector finds it, and the request would go on decoding for nobody until then.
    """

    def __init__(self, content: Any, on_close: Any) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-store"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _summary(server: Server, turn: int, doc) -> dict:
    with open(os.path.join(server.turn_dir(turn), "document.json")) as f:
        segments = json.load(f)["segments"]
    # the answer's own pictures and clips (the prompt's are in the document too, marked from_prompt)
    files = [s["file"] for s in segments if "file" in s and not s.get("from_prompt") and FILE.match(s["file"])]
    base = f"/api/turns/{turn}"
    return {
        "turn": turn,
        "text": doc.reply,
        "finish_reason": doc.settings["finish_reason"],
        "images": [f"{base}/{n}" for n in files if n.endswith(".png")],
        "audios": [f"{base}/{n}" for n in files if n.endswith(".wav")],
        "html": f"{base}/document.html",
        "zip": f"{base}.zip",
        "new_tokens": len(doc.ids),
        "timings": doc.timings,
    }


def make_app(scheduler: BatchScheduler, out: str, limits: Limits | None = None, base_cfg=None) -> Starlette:
    server = Server(scheduler, out, limits or Limits(), base_cfg or scheduler.gen.default_config())

    async def info(request: Request) -> Response:
        g = scheduler.gen
        return JSONResponse({
            "format": g.format,
            "sampling": {k: dataclasses.asdict(v) for k, v in g.sampling.items()},
            "max_new_tokens": server.base.max_new_tokens,
            "seed": server.base.seed,
            "limits": dataclasses.asdict(server.limits),
            "load": scheduler.load(),
            "dtype": scheduler.dtype_name,
        })  # fmt: skip

    async def page(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    async def generate(request: Request) -> Response:
        turn = server.new_turn()
        try:
            prompt, cfg, stream = await server.parse(request, turn)
        except (_Bad, ClientDisconnect) as e:
            server.drop_uploads(turn)  # a refused request keeps nothing
            return _error(str(e), e.status) if isinstance(e, _Bad) else _error("the client left", 400)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_event(ev) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        try:
            job = scheduler.submit(prompt, cfg, on_event=on_event if stream else None)
        except Busy as e:
            server.drop_uploads(turn)
            return _error(str(e), 503)
        server.jobs[turn] = job
        done = asyncio.ensure_future(asyncio.to_thread(job.done.wait))
        done.add_done_callback(lambda _: server.drop_uploads(turn))  # read at admission; not needed once it ends

        async def finish() -> dict:
            await done
            server.jobs.pop(turn, None)
            if job.error is not None:
                return {"error": job.error}
            await run_in_threadpool(job.document.save, server.turn_dir(turn))
            await run_in_threadpool(server.prune)
            return _summary(server, turn, job.document)

        if not stream:
            result = await finish()
            return _error(result["error"], 400 if result["error"] != "cancelled" else 499) if "error" in result else (
                JSONResponse(result))  # fmt: skip

        async def events():
            try:
                yield _event("start", {"turn": turn})
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        while not queue.empty():
                            yield _token(queue.get_nowait())
                        break
                    yield _token(getter.result())
                result = await finish()
                yield _event("error" if "error" in result else "done", result)
            finally:
                leave()

        def leave() -> None:
            server.jobs.pop(turn, None)
            if not job.done.is_set():  # the client left: free its rows
                job.cancel()

        return _EventStream(events(), leave)

    async def stop(request: Request) -> Response:
        t = request.path_params["turn"]
        job = server.jobs.get(int(t)) if TURN.match(t) else None
        if job is None:
            return _error(f"no running turn {t}", 404)
        job.stop()
        return JSONResponse({"turn": int(t), "stopping": True})

    def _turn_path(request: Request) -> tuple[str, int]:
        t = request.path_params["turn"]
        if not TURN.match(t) or not os.path.isdir(server.turn_dir(int(t))):
            raise _Bad(f"no finished turn {t}", 404)
        return server.turn_dir(int(t)), int(t)

    async def turn_file(request: Request) -> Response:
        try:
            folder, _ = _turn_path(request)
        except _Bad as e:
            return _error(str(e), e.status)
        name = request.path_params["name"]
        path = os.path.join(folder, name)
        if not FILE.match(name) or not os.path.isfile(path) or os.path.islink(path):
            return _error(f"turn has no file {name!r}", 404)
        return FileResponse(path)

    async def turn_zip(request: Request) -> Response:
        try:
            folder, n = _turn_path(request)
        except _Bad as e:
            return _error(str(e), e.status)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(os.listdir(folder)):
                if FILE.match(name):
                    z.write(os.path.join(folder, name), f"turn_{n:06d}/{name}")
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="turn_{n:06d}.zip"'})  # fmt: skip

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/turns/{turn}/stop", stop, methods=["POST"]),
        Route("/api/turns/{turn}.zip", turn_zip),
        Route("/api/turns/{turn}/{name}", turn_file),
    ]
    return Starlette(routes=routes)


def _token(ev) -> bytes:
    data: dict[str, Any] = {"kind": ev.kind, "step": ev.step}
    if ev.text:
        data["text"] = ev.text
    if ev.span is not None:
        data["span"] = list(ev.span)
    return _event("token", data)


def serve_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> tuple[uvicorn.Server, int]:
    """Run ``app`` on ``host``:``port`` (0: a free port) in a daemon thread -> (server, port); set
    ``server.should_exit = True`` to stop it. The caller's thread stays free for the decode loop
    (:meth:`BatchScheduler.run`). Raises UserError (one line) when the address cannot be bound."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except SystemExit:  # uvicorn's way out of a failed start-up: the loop below says it in one line
            pass

    thread = threading.Thread(target=run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise UserError(f"cannot serve on {host}:{port}: the server stopped while starting")
        time.sleep(0.05)
    return server, port
