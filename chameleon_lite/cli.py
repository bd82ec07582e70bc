"""`chameleon-lite <command>`: the command-line entry point.

Each layer owns the file that declares its commands (``register(cli)``); this module only builds the parser
tree, dispatches, and turns user errors into one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from chameleon_lite.errors import UserError

# Modules that declare commands, in the order they appear in --help.
COMMAND_MODULES = (
    "chameleon_lite.quickstart.commands",
    "chameleon_lite.data_commands",
    "chameleon_lite.tokenizers.text_commands",
    "chameleon_lite.tokenizers.image_commands",
    "chameleon_lite.tokenizers.audio_commands",
    "chameleon_lite.vocab_commands",
    "chameleon_lite.train.commands",
    "chameleon_lite.generate.commands",
    "chameleon_lite.eval.commands",
    "chameleon_lite.convert.commands",
    "chameleon_lite.explain.commands",
    "chameleon_lite.serve.commands",
    "chameleon_lite.demo",
    "chameleon_lite.kernel_commands",
)

DESCRIPTION = """\
One decoder-only transformer that reads and writes text, images and audio as one token stream.
Train the three tokenizers and the transformer on your own data, generate interleaved documents
(text, PNG, WAV) and judge models with held-out evals. With no --model, generate and eval use the
demo model the package ships."""
EPILOG = """\
start with:
  chameleon-lite generate --prompt "a large red circle in the top left" --out out/demo
each command has its own --help, e.g. chameleon-lite data tokenize --help"""

GROUP_HELP = {
    "data": "build, validate and pretokenize data",
    "tokenizer": "train and inspect the text, image and audio tokenizers",
    "convert": "checkpoints in the transformers Chameleon format in and out",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CLI:
    """Registry the command modules add their subcommands to."""

    def __init__(self) -> None:
        self.parser = _Parser(
            prog="chameleon-lite",
            description=DESCRIPTION,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self._top = self.parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
        self._top.required = True
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def command(
        self, path: str, help: str, handler: Callable[[argparse.Namespace], int | None]
    ) -> argparse.ArgumentParser:
        """Add a command at ``path`` ("generate" or "data validate"); handler(args) returns an exit code or None."""
        parts = path.split()
        if len(parts) == 1:
            p = self._top.add_parser(parts[0], help=help, description=help)
        elif len(parts) == 2:
            p = self._group(parts[0]).add_parser(parts[1], help=help, description=help)
        else:
            raise ValueError(f"command paths have one or two words, got {path!r}")
        p.set_defaults(_handler=handler)
        return p

    def _group(self, name: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            gp = self._top.add_parser(name, help=GROUP_HELP.get(name, name), description=GROUP_HELP.get(name, name))
            sub = gp.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", parser_class=_Parser)
            sub.required = True
            self._groups[name] = sub
        return self._groups[name]


def build_parser() -> argparse.ArgumentParser:
    cli = CLI()
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(cli)
    return cli.parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args._handler(args)
    except UserError as e:
        print(f"chameleon-lite: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chameleon-lite: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
