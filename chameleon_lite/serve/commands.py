"""`chameleon-lite serve`: the web page and HTTP API on localhost."""

from __future__ import annotations

import argparse

from chameleon_lite import argtypes as at


def _serve(args: argparse.Namespace) -> int:
    import torch

    from chameleon_lite.files import SERVE, check_output_dir
    from chameleon_lite.generate.batching import BatchScheduler
    from chameleon_lite.generate.commands import load_generator
    from chameleon_lite.serve.app import Limits, make_app, serve_in_thread

    check_output_dir(args.out, SERVE)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen, cfg = load_generator(args)
    # the decode loop runs in this thread, the one that loaded the model, and the HTTP server in another (see
    # BatchScheduler.run: a second thread driving the model's ops is much slower on a CPU)
    sched = BatchScheduler(gen, max_batch=args.max_batch, max_queue=args.max_queue, dtype=args.dtype,
                           weights=args.weights, thread=False)  # fmt: skip
    limits = Limits(max_prompt_chars=args.max_prompt_chars, max_upload_bytes=args.max_upload_mb << 20)
    app = make_app(sched, args.out, limits, cfg)
    server, _ = serve_in_thread(app, args.host, args.port)
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (max batch {args.max_batch}, queue "
          f"{args.max_queue}, answers in {args.out}/); Ctrl-C stops", flush=True)  # fmt: skip
    try:
        sched.run()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.should_exit = True
        sched.close()
    return 0


def register(cli) -> None:
    from chameleon_lite.generate.commands import model_flags

    p = cli.command("serve", "a local web page and HTTP API: mixed-modal conversations, batched together", _serve)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=at.int_range(1, 65535), default=8000, help="port (default 8000)")
    p.add_argument(
        "--out", default="served", metavar="DIR", help="folder of the answers and uploads (default ./served)"
    )
    p.add_argument("--max-batch", type=at.int_range(1, 256), default=8, help="requests decoded together (default 8)")
    p.add_argument(
        "--max-queue", type=at.int_range(0, 4096), default=32, help="requests waiting before 'busy' (default 32)"
    )
    p.add_argument("--max-prompt-chars", type=at.int_range(1, 1 << 20), default=4000, help="(default 4000)")
    p.add_argument("--max-upload-mb", type=at.int_range(1, 1024), default=8, help="per file (default 8)")
    model_flags(p)
