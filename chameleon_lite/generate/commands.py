"""`chameleon-lite generate`: prompt a model folder, stream text to the terminal, write the document folder(s)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from chameleon_lite import argtypes as at

FLAGS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "cfg": "cfg_scale",
    "repetition_penalty": "repetition_penalty",
}  # --{kind}-{flag} -> SamplingSettings field


def _settings(args: argparse.Namespace, kind: str, base):
    """``base`` (the model's sampling defaults for ``kind``) with the flags given on the command line."""
    import dataclasses

    given = {field: getattr(args, f"{kind}_{flag}") for flag, field in FLAGS.items()}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


class _Printer:
    """Streams row 0's text; shows a progress line while an image/audio span is being generated.

    On a terminal the line is redrawn in place; into a file or pipe only the span's final count is written.
    """

    def __init__(self, out=None) -> None:
        self._out = out
        self.in_span = False
        self._last = ""
        self._line_open = False

    @property
    def out(self):
        return self._out if self._out is not None else sys.stdout  # looked up late: stdout may be replaced

    def _live(self) -> bool:
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty())

    def __call__(self, ev) -> None:
        if ev.row != 0:
            return
        if ev.span is not None:
            done, total = ev.span
            what = "image" if total else "audio"
            self._last = f"[{what}: {done}/{total} tokens]" if total else f"[{what}: {done} tokens]"
            if self._live():
                self._write("\r" + self._last)
            self.in_span = True
        else:
            self._end_span()
            self._write(ev.text)
        self.out.flush()

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self._line_open = not text.endswith("\n")

    def _end_span(self) -> None:
        if self.in_span:
            self._write("\n" if self._live() else self._last + "\n")
            self.in_span = False

    def finish(self) -> None:
        """After the last event: close a span still open and end the line."""
        self._end_span()
        self._write("\n" if self._line_open else "")
        self.out.flush()


def _generate(args: argparse.Namespace) -> int:
    import torch

    from chameleon_lite.files import DOCUMENT, DOCUMENTS, check_output_dir
    from chameleon_lite.generate import GenerationConfig, Generator, Prompt

    check_output_dir(args.out, DOCUMENT if args.batch == 1 else DOCUMENTS)  # before any generation work
    if args.threads:
        torch.set_num_threads(args.threads)
    from chameleon_lite.data.media import check_media_path

    for kind, paths in (("image", args.image), ("audio", args.audio)):
        for path in paths or ():
            check_media_path(path, kind)  # before the model loads: a wrong path is named at once
    if args.model is None:
        from chameleon_lite.bundle import demo_model_dir

        args.model = demo_model_dir()
    say = (lambda *a, **k: None) if args.quiet else print
    say(f"loading the model from {args.model} ...", end="", flush=True)
    t0 = time.perf_counter()
    gen = Generator.from_dir(args.model)
    say(f" {time.perf_counter() - t0:.1f} s")
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        stop=tuple(args.stop or ()),
        dtype=args.dtype,
        weights=args.weights,
        **{k: _settings(args, k, v) for k, v in gen.sampling.items()},
    )
    prompt = Prompt(text=args.prompt or "", images=args.image or (), audios=args.audio or (), then=args.then)
    printer = None if args.quiet else _Printer()
    docs = gen.generate([prompt] * args.batch, cfg, stream=printer)
    if printer is not None:
        printer.finish()
    for i, doc in enumerate(docs):
        out = args.out if args.batch == 1 else os.path.join(args.out, f"sample_{i:03d}")
        doc.save(out)
        print(
            f"wrote {out}/document.html ({len(doc.images)} images, {len(doc.audios)} audio clips, "
            f"{len(doc.ids)} tokens, {doc.settings['finish_reason']})"
        )
    t = docs[0].timings
    print(
        f"time to first token {1e3 * t['time_to_first_token_s']:.0f} ms, decode {t['decode_tokens_per_s']:.1f} tokens/s "
        f"({t['batch']} rows{', CFG' if t['cfg_rows'] else ''}, {t['dtype']})"
    )
    return 0


def register(cli) -> None:
    p = cli.command("generate", "generate an interleaved text/image/audio document from a prompt", _generate)
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="exported model folder (model.safetensors, config.json, tokenizers); default: the shipped demo model",
    )
    p.add_argument(
        "--prompt",
        default="",
        help="prompt text (default: none; the model starts from the images/audio given, or from nothing)",
    )
    p.add_argument("--image", action="append", metavar="PATH", help="prompt image (repeatable)")
    p.add_argument("--audio", action="append", metavar="PATH", help="prompt audio clip (repeatable)")
    p.add_argument(
        "--then",
        choices=("text", "image", "audio", "media"),
        default=None,
        help="what follows the prompt: image or audio opens that span; media: a picture or a clip, the "
        "model's choice (the prompt is a complete request, not text to go on writing); default: "
        "the model's choice of anything",
    )
    p.add_argument(
        "--max-new-tokens", type=at.int_range(1, 1 << 20), default=256, help="new tokens per sample (default 256)"
    )
    p.add_argument("--seed", type=at.seed, default=0, help="sampling seed (same seed, same document)")
    p.add_argument(
        "--batch", type=at.int_range(1, 4096), default=1, help="samples of the prompt generated together (default 1)"
    )
    p.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop a sample when its text contains TEXT (repeatable)"
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="compute dtype (default: bf16 where the CPU has it natively)",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="weights of fp32 decode steps on the CPU: bf16 halves the memory they stream (default: bf16 on the CPU)",
    )
    p.add_argument("--threads", type=at.int_range(0, 4096), default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--out", default="generated", metavar="DIR", help="output folder (default ./generated)")
    p.add_argument("--quiet", action="store_true", help="do not stream text to the terminal")
    p.epilog = (
        "A sampling flag left out takes the model folder's generation.json (the shipped model's holds the settings "
        "its evaluation was measured with), else the built-in default: text temperature 0.8, top-p 0.95; image "
        "and audio temperature 1; top-k, min-p, guidance and repetition penalty off."
    )
    for kind in ("text", "image", "audio"):
        d = "default: the model's generation.json, else built-in"
        p.add_argument(f"--{kind}-temperature", type=at.nonnegative_float, help=f"{kind} temperature (0 = greedy; {d})")
        p.add_argument(f"--{kind}-top-k", type=at.nonnegative_int, help=f"{kind} top-k (0 = off; {d})")
        p.add_argument(f"--{kind}-top-p", type=at.float_range(0.0, 1.0, lo_open=True), help=f"{kind} top-p ({d})")
        p.add_argument(f"--{kind}-min-p", type=at.probability, help=f"{kind} min-p ({d})")
        p.add_argument(
            f"--{kind}-cfg", type=at.nonnegative_float, help=f"{kind} classifier-free guidance scale (1 = off; {d})"
        )
        p.add_argument(
            f"--{kind}-repetition-penalty", type=at.positive_float, help=f"{kind} repetition penalty (1 = off; {d})"
        )
