"""`chameleon-lite explain`: cross-modal attention maps of a document, or their measurement on procedural pictures."""

from __future__ import annotations

import argparse

from chameleon_lite import argtypes as at
from chameleon_lite.errors import UserError


def _explain(args: argparse.Namespace) -> int:
    from chameleon_lite.bundle import demo_model_dir
    from chameleon_lite.explain.report import explain, measure
    from chameleon_lite.generate import Generator, Prompt

    gen = Generator.from_dir(args.model or demo_model_dir())  # fp32: the maps come from fp32 attention
    if args.measure:
        result = measure(gen, args.measure, args.seed, args.out)
        for direction, d in result["directions"].items():
            print(f"shape words {direction} the picture: {d['share'][-1]:.3f} of the attention on the shape's cells "
                  f"(uniform: {d['uniform'][-1]:.3f}, ratio {d['ratio'][-1]:.2f}; {d['words']} words)")  # fmt: skip
        print(f"wrote {args.out}/report.html ({result['seconds']:.1f} s)")
        return 0
    if not (args.prompt or args.image or args.audio):
        raise UserError("give --prompt (and/or --image, --audio) to explain, or --measure N")
    prompt = Prompt(text=args.prompt or "", images=args.image or (), audios=args.audio or (), then=args.then)
    ids, span_ids = gen.encode_prompt(prompt)
    if args.max_new_tokens:
        cfg = gen.default_config(max_new_tokens=args.max_new_tokens, seed=args.seed, dtype="fp32", weights="fp32")
        doc = gen.generate(prompt, cfg)[0]
        ids = list(doc.prompt_ids) + list(doc.ids)
        span_ids = span_ids + [0] * (len(ids) - len(span_ids))
    result = explain(gen, ids, span_ids, args.words.split(",") if args.words else None, args.out)
    print(f"{len(result['maps'])} map(s) over {result['tokens']} tokens: {args.out}/report.html "
          f"({result['seconds']:.1f} s)")  # fmt: skip
    return 0


def register(cli) -> None:
    p = cli.command(
        "explain",
        "cross-modal attention maps: for the words of a document, heat maps over its pictures' token grids and its "
        "clips' frames, per layer and averaged (PNG + report.html), from the attention the model runs; or "
        "--measure N: how much of each shape word's attention lands on that shape, against uniform attention",
        _explain,
    )
    p.add_argument("--model", metavar="DIR", help="exported model folder (default: the shipped demo model)")
    p.add_argument("--prompt", help="the document's text (a request, or text after --image/--audio inputs)")
    p.add_argument("--image", action="append", metavar="FILE", help="a picture given as input (repeatable)")
    p.add_argument("--audio", action="append", metavar="FILE", help="a clip given as input (repeatable)")
    p.add_argument("--then", choices=("text", "image", "audio", "media"), help="what the model writes first")
    p.add_argument(
        "--max-new-tokens",
        type=at.int_range(0, 1 << 16),
        default=256,
        help="generate this many tokens after the prompt and explain the whole document (0: the prompt alone; "
        "default 256)",
    )
    p.add_argument("--words", help="comma-separated words to map (default: the first 8 content words of the text)")
    p.add_argument("--measure", type=at.int_range(1, 100000), metavar="N", help="measure on N procedural pictures")
    p.add_argument("--seed", type=at.seed, default=0, help="sampling seed, and the pictures' seed of --measure")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (new or empty)")
