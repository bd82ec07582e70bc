"""The demo model shipped inside the package, so `chameleon-lite generate` works right after install.

It lives in ``chameleon_lite/assets/demo_model/``: an exported model folder (ARCHITECTURE §7) whose transformer
weights are stored in bf16 to keep the package small, plus ``RECIPE.json`` — the exact command, seed, machine and
wall times that produced it, and its evaluation numbers — and ``generation.json``, the sampling settings those numbers
were measured with, which `generate` uses unless told otherwise. :func:`ship_demo` writes it from any exported model.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from typing import Any

from chameleon_lite.bundle import DEMO_DIR, demo_model_dir  # noqa: F401  (demo_model_dir re-exported)
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import MODEL, check_output_dir, read_json, replace_dir, write_json_atomic

RECIPE_FILE = "RECIPE.json"
MAX_BYTES = 30 * 1024 * 1024


def _first_existing(*paths: str) -> str:
    return next((p for p in paths if os.path.exists(p)), paths[0])


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def ship_demo(model_dir: str, recipe: dict[str, Any], out: str = DEMO_DIR, max_bytes: int = MAX_BYTES) -> str:
    """Copy an exported model into ``out`` with bf16 transformer weights and ``RECIPE.json``; refuse if the result
    would exceed ``max_bytes``. Written beside ``out`` and renamed into place."""
    import torch

    from chameleon_lite.eval.harness import write_eval_sampling
    from chameleon_lite.model.io import load_model, save_model_dir
    from chameleon_lite.tokenizers.loader import Tokenizers

    tmp = f"{out}.new"
    check_output_dir(out, MODEL)
    model = load_model(model_dir).to(torch.bfloat16)
    vocab = Tokenizers.load(model_dir).vocab
    save_model_dir(model, vocab, model_dir, tmp)  # refuses a leftover tmp that is not a model folder
    size = folder_bytes(tmp)
    if size > max_bytes:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"{model_dir}: the demo model would take {size / 2**20:.1f} MB, more than "
            f"{max_bytes / 2**20:.0f} MB; ship a smaller preset"
        )
    write_eval_sampling(tmp)  # generate's defaults: the sampling its recorded 500-prompt evaluation used
    rec = {
        "source": os.path.abspath(model_dir),
        "bytes": size,
        "weights_dtype": "bfloat16",
        "python": platform.python_version(),
        "torch": torch.__version__,
        **recipe,
    }
    write_json_atomic(os.path.join(tmp, RECIPE_FILE), rec)
    replace_dir(tmp, out, MODEL)
    return out


def _eval_command(model: str, shards: str, out: str) -> str:
    """The 500-prompt evaluation every demo recipe records."""
    return f"chameleon-lite eval --model {model} --n 500 --batch 32 --samples 6 --shards {shards} --out {out}"


def _eval_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """An eval.json without its samples: per task n, exact, attributes (and span counts), seconds."""
    tasks = {t: {k: v for k, v in r.items() if k != "samples"} for t, r in ev["tasks"].items()}
    return {
        "tasks": tasks,
        "tokenizers": ev.get("tokenizers"),
        "perplexity": ev.get("perplexity"),
        "seconds": ev.get("seconds"),
    }


def _continued_stage(out: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One continued-pretraining stage (train/demo_continue.sh) in ``out``, or one decoder fine-tuning stage
    (train/demo_decoders.sh: the summaries of its two tokenizer runs instead of a training run): its run, the stage times the script logged
    in stage_seconds.jsonl (a resumed stage adds up), and the exact rates of its eval when it has one; also that
    eval.json itself (None without one)."""
    from chameleon_lite.train.metrics import read_metrics

    stages: dict[str, float] = {}
    log = os.path.join(out, "stage_seconds.jsonl")
    for rec in read_metrics(log) if os.path.exists(log) else []:
        stages[rec["stage"]] = stages.get(rec["stage"], 0.0) + float(rec["seconds"])
    run_json = os.path.join(out, "run", "run.json")
    decoders = {
        m: _first_existing(os.path.join(out, m, "run", m, "summary.json"), os.path.join(out, m, "run", "summary.json"))
        for m in ("image", "audio")
    }  # the run folder of each tokenizer trainer (before: one shared run/)
    if not os.path.exists(run_json) and any(os.path.exists(p) for p in decoders.values()):
        # a train/demo_decoders.sh stage: the two tokenizer runs that fine-tuned a decoder each
        stage = {
            "out": out,
            "kind": "decoder fine-tuning",
            "stage_seconds": stages,
            "minutes": round(sum(stages.values()) / 60, 1),
        }
        for m, p in decoders.items():
            if os.path.exists(p):
                summ = read_json(p, f"{m} tokenizer run summary")
                stage[f"{m}_decoder"] = {
                    k: summ[k] for k in ("steps", "train_seconds", "threads", "last", "train_config") if k in summ
                }
        return _stage_corpus_and_eval(out, stage)
    run = read_json(run_json, "training run record")
    steps = read_metrics(os.path.join(out, "run", "metrics.jsonl"))
    train_steps = [r for r in steps if "step_time" in r]
    val = [r for r in steps if "val_loss" in r]
    stage: dict[str, Any] = {
        "out": out,
        "stage_seconds": stages,
        "minutes": round(sum(stages.values()) / 60, 1),
        "train": run["train"],
        "steps": len(train_steps),
        "tokens": int(sum(r["tokens"] for r in train_steps)),
        "median_tokens_per_second": sorted(r["tokens_per_s"] for r in train_steps)[len(train_steps) // 2]
        if train_steps
        else None,
        "val_loss": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in val],
    }
    return _stage_corpus_and_eval(out, stage)


def _stage_corpus_and_eval(out: str, stage: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``stage`` with the record of its own corpus and its eval's exact rates added; also that eval.json (or None)."""
    corpus = os.path.join(out, "corpus", "corpus.json")
    if os.path.exists(corpus):  # the stage's own corpus: how many documents, which seed, which task weights
        c = read_json(corpus, "corpus record")
        stage["corpus"] = {
            "n": c["n"],
            "seed": c["seed"],
            "task_weights": c["config"]["task_weights"],
            "image_size": c["config"].get("image_size"),
        }
    path = os.path.join(out, "eval", "eval.json")
    ev = read_json(path, "evaluation") if os.path.exists(path) else None
    if ev is not None:
        stage["eval_exact"] = {t: r.get("exact") for t, r in ev["tasks"].items()}
    return stage, ev


def recipe(first: str, *continued: str, machine: str = "") -> dict[str, Any]:
    """RECIPE.json of a model made as train/demo_recipe.sh makes it: the quickstart in ``first`` (its stage times
    read from the pipeline's markers, so a resumed quickstart counts every stage once), then zero or more stages of
    continued pretraining, each from the model of the one before. The recipe's eval is the last stage's: the
    500-prompt evaluation in ``first/eval500`` when there is no continued stage."""
    from chameleon_lite.hardware import describe_machine
    from chameleon_lite.quickstart import stage_seconds
    from chameleon_lite.train.metrics import read_metrics

    qs = read_json(os.path.join(first, "quickstart.json"), "quickstart record")
    first_s = {k: round(v, 1) for k, v in stage_seconds(first).items()}
    log = os.path.join(first, "stage_seconds.jsonl")
    for rec in read_metrics(log) if os.path.exists(log) else []:  # what the script ran after the quickstart
        first_s[rec["stage"]] = round(first_s.get(rec["stage"], 0.0) + float(rec["seconds"]), 1)
    later, evals = zip(*(_continued_stage(out) for out in continued)) if continued else ((), ())
    if continued:
        last, eval_dir, shards = f"{continued[-1]}/model", f"{continued[-1]}/eval", f"{first}/shards/val"
    else:
        last, eval_dir, shards = f"{first}/model", f"{first}/eval500", f"{first}/shards/val"
    last_eval = (evals[-1] if evals else None) or read_json(os.path.join(eval_dir, "eval.json"), "evaluation")
    cfg = qs["config"]
    calib = os.path.join(first, "calibration.json")
    return {
        "command": "bash train/demo_recipe.sh",
        "seed": int(cfg["seed"]),
        "machine": machine or describe_machine(),
        "stages": {
            "quickstart": {
                "command": f"chameleon-lite quickstart --out {first} --budget-minutes {cfg['budget_minutes']:g} --seed {cfg['seed']}",
                "stage_seconds": first_s,
                "minutes": round(sum(first_s.values()) / 60, 1),
                "config": cfg,
                "pretraining": read_json(calib, "pretraining calibration") if os.path.exists(calib) else None,
            },
            "continued": list(later),
        },
        "total_minutes": round((sum(first_s.values()) + sum(sum(c["stage_seconds"].values()) for c in later)) / 60, 1),
        "eval_command": _eval_command(last, shards, eval_dir),
        "eval": _eval_summary(last_eval),
    }


def extend(
    base: dict[str, Any], out: str, command: str, commit: str, from_model: str, machine: str = ""
) -> dict[str, Any]:
    """The recipe ``base`` (a shipped model's RECIPE.json) with one more stage: the train/demo_continue.sh
    (continued pretraining) or train/demo_decoders.sh (decoder fine-tuning) stage in ``out``, run as ``command`` on the code of ``commit``, from ``from_model`` (what
    the stage's init_from folder held, e.g. the shipped model of an earlier commit). The recipe's eval becomes the
    stage's 500-prompt evaluation in ``out/eval``; the stages before keep their own records."""
    from chameleon_lite.hardware import describe_machine

    for key in ("stages", "total_minutes"):
        if key not in base:
            raise ConfigError(f"the recipe to extend has no {key!r}: not a demo model's RECIPE.json")
    stage, ev = _continued_stage(out)
    if ev is None:
        raise ConfigError(f"{out}: the stage has no evaluation ({out}/eval/eval.json); run its 500-prompt eval first")
    stage.update(command=command, commit=commit, machine=machine or describe_machine(), from_model=from_model)
    rec = {k: v for k, v in base.items() if k not in ("source", "bytes", "weights_dtype", "python", "torch")}
    before = [{"command": base.get("command"), "commit": base.get("commit"), "machine": base.get("machine")}]
    rec["commands"] = [
        *base.get("commands", before),
        {"command": command, "commit": commit, "machine": stage["machine"]},
    ]
    rec["command"] = " && ".join(
        f"git checkout {c['commit']} && {c['command']}" if c.get("commit") else c["command"] for c in rec["commands"]
    )
    rec["stages"] = {**base["stages"], "continued": [*base["stages"].get("continued", []), stage]}
    rec["total_minutes"] = round(float(base["total_minutes"]) + stage["minutes"], 1)
    shards = stage.get("train", {}).get("val_data") or (ev.get("config") or {}).get("shards") or f"{out}/shards/val"
    rec["eval_command"] = _eval_command(f"{out}/model", shards, f"{out}/eval")
    rec["eval"] = _eval_summary(ev)
    return rec


def _ship(args) -> int:
    recipe: dict[str, Any] = {}
    if args.recipe:
        recipe = read_json(args.recipe, "recipe")
    if args.command_line:
        recipe["command"] = args.command_line
    out = ship_demo(args.model, recipe, out=args.out)
    print(f"demo model written to {out} ({folder_bytes(out) / 2**20:.1f} MB)")
    return 0


def register(cli) -> None:
    p = cli.command(
        "ship-demo", "store an exported model (bf16) as the demo model the package ships, with its recipe", _ship
    )
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder (e.g. runs/quickstart/model)")
    p.add_argument("--recipe", help="JSON file with how the model was made (e.g. runs/quickstart/quickstart.json)")
    p.add_argument("--command-line", help="the exact command that produced the model")
    p.add_argument("--out", default=DEMO_DIR, metavar="DIR", help="where to write it (default: inside the package)")


def main(argv: list[str] | None = None) -> int:
    """``python -m chameleon_lite.demo QUICKSTART_DIR [CONTINUED_DIR ...] [--machine M]``: print the recipe of
    train/demo_recipe.sh's model; ``python -m chameleon_lite.demo STAGE_DIR --extend RECIPE.json --command C
    --commit SHA --from-model WHAT``: print RECIPE.json with one train/demo_continue.sh or train/demo_decoders.sh
    stage added."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m chameleon_lite.demo", description=main.__doc__)
    p.add_argument("first", metavar="QUICKSTART_DIR", help="(with --extend: the continued stage's folder)")
    p.add_argument("continued", nargs="*", metavar="CONTINUED_DIR", help="continued-pretraining stages, in order")
    p.add_argument("--machine", default="", help="the machine description (default: this machine's)")
    p.add_argument(
        "--extend",
        metavar="RECIPE_JSON",
        help="add the one train/demo_continue.sh or train/demo_decoders.sh stage to this recipe",
    )
    p.add_argument("--command", default="", help="with --extend: the exact command that ran the stage")
    p.add_argument("--commit", default="", help="with --extend: the code version that ran it")
    p.add_argument("--from-model", default="", help="with --extend: what the stage started from")
    args = p.parse_args(argv)
    try:
        if args.extend:
            if args.continued or not (args.command and args.commit and args.from_model):
                raise ConfigError("--extend takes one stage folder and needs --command, --commit and --from-model")
            rec = extend(
                read_json(args.extend, "recipe"),
                args.first,
                args.command,
                args.commit,
                args.from_model,
                machine=args.machine,
            )
        else:
            rec = recipe(args.first, *args.continued, machine=args.machine)
        print(json.dumps(rec, indent=2))
    except ConfigError as e:
        print(f"demo recipe: error: {e}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as e:  # a record that parses but lacks what the recipe reads
        print(
            f"demo recipe: error: a stage record under {args.first} is malformed ({type(e).__name__}: {e})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
