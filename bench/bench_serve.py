"""Load on loopback: `chameleon-lite serve`'s batched decode loop against the same requests run one by one.

    python bench/bench_serve.py [--model DIR] [--requests 200] [--clients 1 8 32] [--max-batch 8] [--out bench/results]

Starts the app on a free localhost port (uvicorn in this process, the same app `serve` runs), then for each client
count sends ``--requests`` requests (the README's kinds of request: a picture, a clip, both, text; each its own seed)
from that many concurrent HTTP clients, non-streaming. Every answer is compared with the document
:meth:`Generator.generate` makes for the same request alone (the baseline, timed one by one in the same run on the
same threads): "lost" counts requests with no answer, "mixed up" answers that are another request's, "ids differ"
answers whose ids differ from the request's own alone (float rounding of batched steps can do that), "busy" the 503
refusals. Table: throughput (requests/s), p50/p95 latency, busy, lost, ratio to one by one. JSON + PNG.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from common import machine_info, print_table, save_bar_chart, write_json  # noqa: E402

from chameleon_lite.bundle import demo_model_dir  # noqa: E402
from chameleon_lite.generate import Generator, Prompt  # noqa: E402
from chameleon_lite.generate.batching import BatchScheduler  # noqa: E402
from chameleon_lite.serve.app import make_app, serve_in_thread  # noqa: E402

REQUESTS = [
    ("a large red circle in the top left", "media"),
    ("play C5 on a sine wave", "media"),
    ("a small blue square in the bottom right", "media"),
    ("a large red circle in the top left, then play C5 on a sine wave", None),
]


def _request(k: int) -> dict:
    text, then = REQUESTS[k % len(REQUESTS)]
    return {"prompt": text, "seed": str(1000 + k), **({"then": then} if then else {})}


def _post(port: int, form: dict) -> tuple[int, dict, float]:
    data = urllib.parse.urlencode(form).encode()
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/generate", data, timeout=600) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), time.perf_counter() - t0


def _load(port: int, out_dir: str, base: dict, one_by_one: float, args) -> list[dict]:
    rows = []
    for n in args.clients:
        lat, busy, lost, mixed, differs, t0 = [], 0, 0, 0, 0, time.perf_counter()
        with cf.ThreadPoolExecutor(n) as pool:
            futs = {pool.submit(_post, port, _request(k)): k for k in range(args.requests)}
            for fut in cf.as_completed(futs):
                k = futs[fut]
                status, body, dt = fut.result()
                if status == 503:
                    busy += 1
                    continue
                turn = body.get("turn")
                doc = os.path.join(out_dir, f"turn_{turn:06d}", "document.json") if status == 200 else None
                if doc is None or not os.path.exists(doc):
                    lost += 1
                    continue
                with open(doc) as f:
                    ids = json.load(f)["ids"]
                if ids != base[k]:
                    # another request's answer (mixed up) or float rounding of the batched steps (differs)
                    mixed += any(ids == b for j, b in base.items() if j != k)
                    differs += 1
                lat.append(dt)
        wall = time.perf_counter() - t0
        answered = len(lat)
        row = {"clients": n, "answered": answered, "busy": busy, "lost": lost, "mixed up": mixed,
               "ids differ from alone": differs,
               "requests/s": answered / wall, "vs one by one": answered / wall / one_by_one,
               "p50 s": statistics.median(lat) if lat else float("nan"),
               "p95 s": sorted(lat)[int(0.95 * (len(lat) - 1))] if lat else float("nan")}  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    return rows


def _stream_times(port: int, form: dict) -> dict[str, float]:
    """One streaming request, alone -> seconds from sending it to its first text event, its first picture row (the
    first ``side`` codes of a picture: one row of the grid) and its end."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/api/generate", urllib.parse.urlencode({**form, "stream": "1"}),
                 {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    resp, out, kind = conn.getresponse(), {}, None
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "token":
            ev = json.loads(line[6:])
            if ev.get("text") and "first text event" not in out:
                out["first text event"] = time.perf_counter() - t0
            if ev["kind"] == "image" and ev.get("span") and ev["span"][0] * ev["span"][0] >= ev["span"][1] > 0:
                out.setdefault("first picture row", time.perf_counter() - t0)
        elif line.startswith("data: ") and kind in ("done", "error"):
            out["whole answer"] = time.perf_counter() - t0
    conn.close()
    return out


def _streaming(port: int, repeats: int) -> dict[str, float]:
    """Medians over ``repeats`` requests of each kind, one at a time: a text answer and a picture."""
    got: dict[str, list[float]] = {}
    for k in range(repeats):
        for form in ({"prompt": "what is red?", "seed": str(3000 + k), "max_new_tokens": "24"},
                     {"prompt": REQUESTS[0][0], "then": "media", "seed": str(3000 + k)}):  # fmt: skip
            times = _stream_times(port, form)
            kind = "picture" if "then" in form else "text"
            for name, t in times.items():
                got.setdefault(f"{kind}: {name}", []).append(t)
    return {name: statistics.median(v) for name, v in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--stream-repeats", type=int, default=5, help="streaming requests of each kind, one at a time")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    model = args.model or demo_model_dir()
    gen = Generator.from_dir(model)
    cfg = gen.default_config(max_new_tokens=args.max_new_tokens)
    # the baseline: each request alone through generate, in this process, on the same threads
    gen.generate(Prompt(text=REQUESTS[0][0], then="media"), cfg)  # warm-up (weights cast, first-call set-up)
    base, t0 = {}, time.perf_counter()
    for k in range(args.requests):
        f = _request(k)
        c = gen.default_config(max_new_tokens=args.max_new_tokens, seed=int(f["seed"]))
        base[k] = gen.generate(Prompt(text=f["prompt"], then=f.get("then")), c)[0].ids
    one_by_one = args.requests / (time.perf_counter() - t0)
    print(f"one by one through generate: {one_by_one:.2f} requests/s", flush=True)

    # the decode loop runs in this (the main) thread, as `serve` runs it; the clients drive the load from another
    sched = BatchScheduler(gen, max_batch=args.max_batch, max_queue=args.max_queue, dtype=cfg.dtype, thread=False)
    out_dir = os.path.join(args.out, "serve_turns")
    app = make_app(sched, out_dir, base_cfg=cfg)
    server, port = serve_in_thread(app)
    rows: list[dict] = []
    streaming: dict = {}
    failed: list[BaseException] = []

    def drive() -> None:
        try:
            rows.extend(_load(port, out_dir, base, one_by_one, args))
            streaming.update(_streaming(port, args.stream_repeats))
        except BaseException as e:  # noqa: BLE001 - shown by the main thread
            failed.append(e)
        finally:
            server.should_exit = True
            sched.close()

    driver = threading.Thread(target=drive, name="clients")
    driver.start()
    sched.run()
    driver.join()
    if failed:
        raise failed[0]
    info = machine_info()
    print(f"\n{args.requests} requests, max batch {args.max_batch}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; baseline one by one: {one_by_one:.2f} requests/s")  # fmt: skip
    print_table(rows, ["clients", "answered", "busy", "lost", "mixed up", "ids differ from alone", "requests/s",
                       "vs one by one", "p50 s", "p95 s"])  # fmt: skip
    print(f"\nstreaming, one request at a time over SSE, medians of {args.stream_repeats}:")
    print_table([{"event": k, "ms": 1e3 * v} for k, v in streaming.items()], ["event", "ms"])
    write_json(os.path.join(args.out, "serve_load.json"),
               {"rows": rows, "streaming_s": streaming, "baseline_requests_per_s": one_by_one, "requests": args.requests,
                "max_batch": args.max_batch, "capability": torch.backends.cpu.get_cpu_capability(), **info})  # fmt: skip
    save_bar_chart(os.path.join(args.out, "serve_load.png"), [f"{r['clients']} clients" for r in rows],
                   [r["vs one by one"] for r in rows], "throughput / one by one",
                   "serve: batched decode loop vs generate one by one")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
