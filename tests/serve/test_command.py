"""`chameleon-lite serve` as a user runs it: a process that answers on its port, stops cleanly on Ctrl-C, and says
in one line when it cannot listen."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def _default_sigint() -> None:
    # A test run started in the background of a non-interactive shell inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler in the child: the server gets Ctrl-C as a terminal would give it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _serve(port: int, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chameleon_lite.cli", "serve", "--port", str(port), "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_then_stops_on_ctrl_c(tmp_path):
    port = _free_port()
    proc = _serve(port, tmp_path / "served")
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
                time.sleep(0.2)
        assert info["load"]["max_batch"] == 8
        data = json.dumps({"prompt": "a large red circle in the top left", "then": "media", "seed": 1}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data,
                                     {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        assert answer["finish_reason"] in ("eos", "length") and len(answer["images"]) == 1, answer
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopping" in out
    assert (tmp_path / "served" / f"turn_{answer['turn']:06d}" / "document.json").exists()


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _serve(port, tmp_path / "served")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().count("\n") == 0 and f"cannot serve on 127.0.0.1:{port}: Address already in use" in err, err


def test_a_server_that_stops_while_starting_is_one_error(capfd):
    """The app's start-up fails (here its lifespan raises): serve_in_thread says so instead of waiting forever."""
    import contextlib

    import pytest
    from starlette.applications import Starlette

    from chameleon_lite.errors import UserError
    from chameleon_lite.serve.app import serve_in_thread

    @contextlib.asynccontextmanager
    async def broken(app):
        raise RuntimeError("no model")
        yield

    with pytest.raises(UserError, match=r"cannot serve on 127\.0\.0\.1:[0-9]+: the server stopped while starting"):
        serve_in_thread(Starlette(lifespan=broken))
    assert "Exception in thread" not in capfd.readouterr().err  # uvicorn's exit from its thread is not a traceback
