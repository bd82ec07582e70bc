"""CLI command of the evaluation harness (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse

from chameleon_lite import argtypes as at
from chameleon_lite.eval import HELDOUT_TASKS, TASKS


def _suite(args: argparse.Namespace) -> str:
    """--suite, with auto: the held-out suite for a model trained on conversations, else the procedural one."""
    if args.suite != "auto":
        return args.suite
    from chameleon_lite.bundle import read_generation

    return "heldout" if read_generation(args.model).get("format") == "chat" else "procedural"


def _heldout(args: argparse.Namespace) -> int:
    from chameleon_lite.errors import UserError
    from chameleon_lite.eval.heldout import DEFAULT_SEED, HeldoutConfig, run_heldout

    wrong = [t for t in args.tasks or () if t not in HELDOUT_TASKS]
    if wrong:
        raise UserError(f"--tasks {wrong} are not tasks of the held-out suite; its tasks: {list(HELDOUT_TASKS)}")
    cfg = HeldoutConfig(
        model=args.model,
        out=args.out,
        n=args.n,
        seed=DEFAULT_SEED if args.seed is None else args.seed,
        tasks=tuple(args.tasks) if args.tasks else HELDOUT_TASKS,
        batch=args.batch,
        corpora=tuple(args.corpus or ()),
        format=args.format,
        cfg_scales=tuple(args.cfg_sweep or ()),
        sweep_n=min(args.n, args.sweep_n),
        variants_n=min(args.n, args.variants_n) if args.variants_n else None,
        samples_in_report=args.samples,
    )
    res = run_heldout(cfg)
    print(f"wrote {cfg.out}/eval.json and {cfg.out}/report.html ({res['seconds']:.0f} s)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from chameleon_lite.errors import UserError
    from chameleon_lite.eval.harness import EvalConfig, run_eval

    if args.model is None:
        from chameleon_lite.bundle import demo_model_dir

        args.model = demo_model_dir()
        args.out = args.out or "demo-eval"
    args.out = args.out or f"{args.model.rstrip('/')}-eval"
    if _suite(args) == "heldout":
        return _heldout(args)
    for flag in ("corpus", "format", "cfg_sweep", "variants_n"):
        if getattr(args, flag):
            raise UserError(f"--{flag.replace('_', '-')} belongs to the held-out suite (--suite heldout)")
    wrong = [t for t in args.tasks or () if t not in TASKS]
    if wrong:
        raise UserError(f"--tasks {wrong} are not tasks of the procedural suite; its tasks: {list(TASKS)}")
    cfg = EvalConfig(
        model=args.model,
        out=args.out,
        n=args.n,
        seed=12345 if args.seed is None else args.seed,
        tasks=tuple(args.tasks) if args.tasks else TASKS,
        batch=args.batch,
        shards=args.shards,
        text_temperature=args.text_temperature,
        image_temperature=args.image_temperature,
        audio_temperature=args.audio_temperature,
        image_cfg=args.image_cfg,
        audio_cfg=args.audio_cfg,
        samples_in_report=args.samples,
    )
    res = run_eval(cfg)
    print(f"wrote {cfg.out}/eval.json and {cfg.out}/report.html ({res['seconds']:.0f} s)")
    return 0


def _train_judges(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from chameleon_lite.errors import UserError
    from chameleon_lite.eval import judge_train as jt

    if args.mnist is None and args.fsdd is None:
        raise UserError("train-judges needs --mnist IMAGES LABELS, --fsdd DIR, or both")
    jt.prepare_out(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = []
    if args.mnist is not None:
        jobs.append(("written", lambda: jt.read_written(*args.mnist), args.epochs_written))
    if args.fsdd is not None:
        jobs.append(("spoken", lambda: jt.read_spoken(args.fsdd), args.epochs_spoken))
    for kind, read, epochs in jobs:
        data = read()
        print(f"{kind} digits from {data.source}: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
        tcfg = jt.TRAIN_PRESETS[kind]
        tcfg = dataclasses.replace(tcfg, seed=args.seed, epochs=epochs or tcfg.epochs)
        judge, _ = jt.train_judge(data, tcfg, log=lambda line: print(line, flush=True))
        for path in jt.save_judge(judge, args.out):
            print(f"wrote {path}")
    return 0


def _eval_real(args: argparse.Namespace) -> int:
    import json

    from chameleon_lite.eval.real_signals import RESULT_FILE, evaluate_real

    res = evaluate_real(
        args.tokenizers, args.out, images=args.images, audio=args.audio, split="" if args.split == "all" else args.split,
        n_images=args.n_images, n_clips=args.n_clips,
    )  # fmt: skip
    print(json.dumps(res, indent=2))
    print(f"wrote {args.out}/{RESULT_FILE}")
    return 0


def _register_eval_real(cli) -> None:
    p = cli.command(
        "tokenizer eval-real",
        "measure the tokenizers on real held-out signals: PSNR and written-judge accuracy of reconstructed pictures, "
        "SI-SNR, STOI and spoken-judge accuracy of reconstructed clips; JSON + PNG grid + WAVs",
        _eval_real,
    )
    p.add_argument("--tokenizers", required=True, metavar="DIR", help="folder holding image_vq.* and/or audio_codec.*")
    p.add_argument("--images", metavar="MANIFEST", help="manifest of labelled pictures (data import-mnist)")
    p.add_argument("--audio", metavar="MANIFEST", help="manifest of labelled clips (data import-labelled-audio)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for real_signals.json, the grid and WAVs")
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test", "all"),
        help="part of chameleon_lite.data.splits to measure (default test: held out of all training)",
    )  # fmt: skip
    p.add_argument("--n-images", type=at.nonnegative_int, default=0, help="at most this many pictures (0 = all)")
    p.add_argument("--n-clips", type=at.nonnegative_int, default=0, help="at most this many clips (0 = all)")


def register(cli) -> None:
    p = cli.command(
        "eval", "judge a model on held-out procedural prompts with the checkers; eval.json + report.html", _eval
    )
    p.add_argument(
        "--model", default=None, metavar="DIR", help="exported model folder (default: the shipped demo model)"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default MODEL-eval)")
    p.add_argument("--n", type=at.int_range(1, 100000), default=100, help="prompts per task (default 100)")
    p.add_argument(
        "--suite",
        choices=("auto", "procedural", "heldout"),
        default="auto",
        help="procedural: template prompts judged by the checkers; heldout: requests in the grammar's reserved "
        "wording, follow-ups, out-of-scope questions, case variants (docs/conversations.md); auto (default): "
        "heldout for a model trained on conversations, else procedural",
    )
    p.add_argument(
        "--seed",
        type=at.seed,
        default=None,
        help="seed of the held-out prompts and of sampling (default 12345 procedural, 424242 heldout)",
    )
    p.add_argument(
        "--tasks", nargs="+", choices=sorted(set(TASKS) | set(HELDOUT_TASKS)), help="tasks to run (default all)"
    )
    p.add_argument(
        "--corpus",
        action="append",
        metavar="MANIFEST",
        help="heldout: a training corpus of the model, checked for the eval's reserved wording, combinations, "
        "requests and seed (repeatable)",
    )
    p.add_argument(
        "--format",
        choices=("chat", "plain"),
        default=None,
        help="heldout: ask in user turns (chat) or as plain prompts (default: the model's generation.json)",
    )
    p.add_argument(
        "--cfg-sweep",
        type=at.float_list,
        metavar="S1,S2,...",
        help="heldout: guidance scales to sweep on text->image and text->audio (e.g. 1,1.5,2,3)",
    )
    p.add_argument(
        "--sweep-n", type=at.int_range(1, 100000), default=100, help="heldout: requests per sweep point (default 100)"
    )
    p.add_argument(
        "--variants-n",
        type=at.int_range(1, 100000),
        default=None,
        help="heldout: requests of case_variants, each asked five ways (default: --n)",
    )
    p.add_argument("--batch", type=at.int_range(1, 4096), default=8, help="prompts generated together (default 8)")
    p.add_argument(
        "--samples", type=at.nonnegative_int, default=16, help="samples per task shown in report.html (default 16)"
    )
    p.add_argument("--shards", default=None, metavar="DIR", help="validation shards for per-modality perplexity")
    p.add_argument("--text-temperature", type=at.nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--image-temperature", type=at.nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--audio-temperature", type=at.nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument(
        "--image-cfg",
        type=at.nonnegative_float,
        default=1.0,
        help="classifier-free guidance scale for image spans (default 1 = off)",
    )
    p.add_argument(
        "--audio-cfg",
        type=at.nonnegative_float,
        default=1.0,
        help="classifier-free guidance scale for audio spans (default 1 = off)",
    )

    p = cli.command(
        "train-judges",
        "train the learned digit judges (CNNs: written on MNIST IDX, spoken on FSDD-named clips) on the training "
        "split; weights + JSON with held-out accuracy + confusion-matrix PNG",
        _train_judges,
    )
    p.add_argument(
        "--mnist",
        nargs=2,
        metavar=("IMAGES", "LABELS"),
        help="MNIST IDX images and labels files (gzip or raw) for the written-digit judge (default: not trained)",
    )
    p.add_argument(
        "--fsdd",
        metavar="DIR",
        help="folder of clips named {digit}_{speaker}_{take}.wav for the spoken-digit judge (default: not trained)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: new, empty or an earlier train-judges folder (its judges of the same kind are replaced)",
    )
    p.add_argument(
        "--epochs-written", type=at.nonnegative_int, default=0, help="epochs of the written judge (default 0 = 15)"
    )
    p.add_argument(
        "--epochs-spoken", type=at.nonnegative_int, default=0, help="epochs of the spoken judge (default 0 = 25)"
    )
    p.add_argument(
        "--seed", type=at.seed, default=0, help="seed of initialisation, shuffling, augmentation (default 0)"
    )
    p.add_argument(
        "--threads", type=at.nonnegative_int, default=0, help="CPU threads for torch (default 0 = torch's choice)"
    )
    _register_eval_real(cli)
