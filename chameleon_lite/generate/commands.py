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


def load_generator(args: argparse.Namespace, stop: tuple[str, ...] = ()):
    """The Generator of --model (default: the shipped model) and the GenerationConfig the flags ask for."""
    from chameleon_lite.generate import GenerationConfig, Generator

    if args.model is None:
        from chameleon_lite.bundle import demo_model_dir

        args.model = demo_model_dir()
    say = (lambda *a, **k: None) if getattr(args, "quiet", False) else print
    say(f"loading the model from {args.model} ...", end="", flush=True)
    t0 = time.perf_counter()
    gen = Generator.from_dir(args.model, dtype=args.dtype)  # loaded in the compute dtype: no second copy
    say(f" {time.perf_counter() - t0:.1f} s")
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        stop=stop,
        dtype=args.dtype,
        weights=args.weights,
        **{k: _settings(args, k, v) for k, v in gen.sampling.items()},
    )
    return gen, cfg


def _chat_mode(args: argparse.Namespace, gen) -> bool:
    """Whether the prompt is a user turn: --chat/--plain when given (--history is a conversation), else the model's
    own format (its generation.json)."""
    from chameleon_lite.errors import UserError

    if args.history and args.plain:
        raise UserError("--history continues a conversation; it cannot be combined with --plain")
    if args.chat or args.history:
        return True
    return False if args.plain else gen.format == "chat"


def _generate(args: argparse.Namespace) -> int:
    import torch

    from chameleon_lite.data.media import check_media_path
    from chameleon_lite.errors import UserError
    from chameleon_lite.files import DOCUMENT, DOCUMENTS, check_output_dir
    from chameleon_lite.generate import Prompt, load_history

    check_output_dir(args.out, DOCUMENT if args.batch == 1 else DOCUMENTS)  # before any generation work
    if args.threads:
        torch.set_num_threads(args.threads)
    for kind, paths in (("image", args.image), ("audio", args.audio)):
        for path in paths or ():
            check_media_path(path, kind)  # before the model loads: a wrong path is named at once
    if args.history and not os.path.exists(args.history):
        raise UserError(f"{args.history}: --history folder not found")
    gen, cfg = load_generator(args, stop=tuple(args.stop or ()))
    chat = _chat_mode(args, gen)
    history = load_history(args.history, gen.vocab) if args.history else ()
    prompt = Prompt(
        text=args.prompt or "",
        images=args.image or (),
        audios=args.audio or (),
        then=args.then,
        chat=chat,
        history=history,
    )
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
    if chat and args.batch == 1:
        print(f'go on with: chameleon-lite generate --history {args.out} --prompt "..."')
    t = docs[0].timings
    print(
        f"time to first token {1e3 * t['time_to_first_token_s']:.0f} ms, decode {t['decode_tokens_per_s']:.1f} tokens/s "
        f"({t['batch']} rows{', CFG' if t['cfg_rows'] else ''}, {t['dtype']})"
    )
    return 0


CHAT_HELP = """commands: /image PATH and /audio PATH attach a picture or a clip to your next message; /new starts a new
conversation; /quit (or end of input) leaves. Every answer is saved as OUT/turn_###/ (document.html, PNG, WAV)."""


def _chat(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from chameleon_lite.data.media import check_media_path
    from chameleon_lite.errors import UserError
    from chameleon_lite.files import CHAT, check_output_dir
    from chameleon_lite.generate import Prompt, close_turn, load_history

    check_output_dir(args.out, CHAT)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen, cfg = load_generator(args)
    if not gen.vocab.conversation_ready:
        raise UserError(f"{args.model}: its vocabulary has no conversation tokens (<user> <assistant> <eot>)")
    if gen.format != "chat":
        print('note: this model was not trained on conversations (its generation.json has no format "chat")')
    done = sorted(d for d in os.listdir(args.out) if d.startswith("turn_")) if os.path.isdir(args.out) else []
    history: list[int] = []
    for name in reversed(done):  # the latest answer that ended its turn (a cut-off one was never kept)
        try:
            history = load_history(os.path.join(args.out, name), gen.vocab)
            break
        except UserError as e:
            if "cut off" not in str(e):
                raise
    if done:
        print(f"going on with the conversation in {args.out} ({len(done)} answers so far; /new starts another)")
    n, images, audios = len(done), [], []
    print(CHAT_HELP)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            break
        if not line:
            continue
        cmd, _, arg = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            break
        if cmd == "/help":
            print(CHAT_HELP)
            continue
        if cmd == "/new":
            history, images, audios = [], [], []
            print("(a new conversation)")
            continue
        if cmd in ("/image", "/audio"):
            try:
                check_media_path(arg.strip(), cmd[1:])
            except UserError as e:
                print(f"error: {e}")
                continue
            (images if cmd == "/image" else audios).append(arg.strip())
            print(f"(attached {arg.strip()} to your next message)")
            continue
        if cmd.startswith("/"):
            print(f"unknown command {cmd}; {CHAT_HELP}")
            continue
        prompt = Prompt(text=line, images=images, audios=audios, chat=True, history=history)
        printer = _Printer()
        print("model> ", end="", flush=True)
        try:
            doc = gen.generate(prompt, dataclasses.replace(cfg, seed=cfg.seed + n), stream=printer)[0]
        except UserError as e:
            printer.finish()
            print(f"error: {e} (/new starts a new conversation)")
            continue
        printer.finish()
        out = os.path.join(args.out, f"turn_{n:03d}")
        doc.save(out)
        n, images, audios = n + 1, [], []
        media = len(doc.images) + len(doc.audios)
        print(f"[saved {out}/document.html{f', {media} media file(s)' if media else ''}]")
        if doc.settings["finish_reason"] == "length":
            print("(the answer was cut off by --max-new-tokens; it is not kept in the conversation)")
        else:
            history = close_turn(doc.conversation, gen.vocab)
    return 0


def model_flags(p) -> None:
    """--model, the token budget, seed, dtype, threads and the sampling flags: what generate and chat share."""
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="exported model folder (model.safetensors, config.json, tokenizers); default: the shipped demo model",
    )
    p.add_argument(
        "--max-new-tokens", type=at.int_range(1, 1 << 20), default=256, help="new tokens per answer (default 256)"
    )
    p.add_argument("--seed", type=at.seed, default=0, help="sampling seed (same seed, same document)")
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


def register(cli) -> None:
    p = cli.command("chat", "talk with a model in turns: text, pictures and clips in and out", _chat)
    p.add_argument(
        "--out",
        default="chat",
        metavar="DIR",
        help="folder of the saved answers (default ./chat); an earlier chat there goes on",
    )
    model_flags(p)
    p = cli.command("generate", "generate an interleaved text/image/audio document from a prompt", _generate)
    p.add_argument(
        "--prompt",
        default="",
        help="prompt text (default: none; the model starts from the images/audio given, or from nothing)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--chat",
        action="store_true",
        help="the prompt is a user turn and the model answers in the assistant turn (the default for a model "
        "trained on conversations, as its generation.json says)",
    )
    fmt.add_argument(
        "--plain",
        action="store_true",
        help="the prompt is text to continue, not a request (the default for a model trained on documents only)",
    )
    p.add_argument(
        "--history",
        metavar="DIR",
        help="go on with the conversation in DIR (an output folder of an earlier `generate` in chat mode): the "
        "prompt is its next user turn",
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
        "--batch", type=at.int_range(1, 4096), default=1, help="samples of the prompt generated together (default 1)"
    )
    p.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop a sample when its text contains TEXT (repeatable)"
    )
    p.add_argument("--out", default="generated", metavar="DIR", help="output folder (default ./generated)")
    p.add_argument("--quiet", action="store_true", help="do not stream text to the terminal")
    model_flags(p)
