"""The recipe of the shipped demo model (its RECIPE.json): what each training stage of train/demo_recipe.sh,
train/demo_continue.sh and train/demo_decoders.sh ran, how long it took and what its evaluation measured, read from
the records those stages leave in their folders. Release bookkeeping, so it lives with the training scripts and not
in the package.

    python train/recipe.py QUICKSTART_DIR [CONTINUED_DIR ...] [--machine M]
    python train/recipe.py STAGE_DIR --extend RECIPE.json --command C --commit SHA --from-model WHAT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from chameleon_lite.errors import ConfigError
from chameleon_lite.files import read_json
from chameleon_lite.hardware import describe_machine


def _first_existing(*paths: str) -> str:
    return next((p for p in paths if os.path.exists(p)), paths[0])


def _eval_command(model: str, shards: str, out: str) -> str:
    """The 500-prompt evaluation every demo recipe records."""
    return f"chameleon-lite eval --model {model} --n 500 --batch 32 --samples 6 --shards {shards} --out {out}"


def _heldout_eval_command(model: str, ev: dict[str, Any], out: str) -> str:
    """The held-out evaluation a conversation stage records (chameleon_lite/eval/heldout.py), from its eval.json."""
    c = ev.get("config") or {}
    words = [f"chameleon-lite eval --model {model} --n {c.get('n')} --batch {c.get('batch')} --samples 6"]
    words += [f"--corpus {m}" for m in c.get("corpora") or ()]
    if c.get("cfg_scales"):
        words.append("--cfg-sweep " + ",".join(f"{x:g}" for x in c["cfg_scales"]))
        if c.get("sweep_n") not in (None, 100):
            words.append(f"--sweep-n {c['sweep_n']}")
    if c.get("variants_n"):
        words.append(f"--variants-n {c['variants_n']}")
    return " ".join(words + [f"--out {out}"])


def _eval_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """An eval.json without its samples: per task n, exact, attributes (and span counts), seconds; for the held-out
    suite also its overlap checks (counts only), its guidance sweep and the recipe-seed check."""
    tasks = {t: {k: v for k, v in r.items() if k != "samples"} for t, r in ev["tasks"].items()}
    if ev.get("suite") == "heldout":
        overlap = [{k: v for k, v in o.items() if k != "examples"} for o in ev.get("overlap") or ()]
        return {"suite": "heldout", "tasks": tasks, "overlap": overlap, "cfg_sweep": ev.get("cfg_sweep"),
                "recipe_seeds": ev.get("recipe_seeds"), "seconds": ev.get("seconds")}  # fmt: skip
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
    from chameleon_lite.pipeline import stage_seconds
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
    rec["eval_command"] = (
        _heldout_eval_command(f"{out}/model", ev, f"{out}/eval")
        if ev.get("suite") == "heldout"
        else _eval_command(f"{out}/model", shards, f"{out}/eval")
    )
    rec["eval"] = _eval_summary(ev)
    return rec


def main(argv: list[str] | None = None) -> int:
    """``python train/recipe.py QUICKSTART_DIR [CONTINUED_DIR ...] [--machine M]``: print the recipe of
    train/demo_recipe.sh's model; ``python train/recipe.py STAGE_DIR --extend RECIPE.json --command C
    --commit SHA --from-model WHAT``: print RECIPE.json with one train/demo_continue.sh or train/demo_decoders.sh
    stage added."""
    p = argparse.ArgumentParser(prog="python train/recipe.py", description=main.__doc__)
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
