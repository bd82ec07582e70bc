import subprocess
import sys

import pytest

from chameleon_lite.cli import build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "chameleon_lite.cli", *args], capture_output=True, text=True)


def _all_commands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_commands(sub, prefix + (name,))
            return
    yield prefix


@pytest.mark.parametrize("path", list(_all_commands(build_parser())), ids=" ".join)
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _arguments(parser, prefix=()):
    """(command path, argparse action) for every argument of every command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _arguments(sub, prefix + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(prefix), action


def test_every_argument_has_help_that_states_its_default():
    missing, no_default = [], []
    for path, a in _arguments(build_parser()):
        name = "/".join(a.option_strings) or a.dest
        if not a.help:
            missing.append(f"{path} {name}")
        elif (
            a.option_strings
            and a.default not in (None, False)
            and "default" not in a.help
            and f"{a.default} =" not in a.help
        ):
            no_default.append(f"{path} {name} (default {a.default!r})")
    assert not missing, f"arguments without help: {missing}"
    assert not no_default, f"options whose help does not state the default: {no_default}"


def test_top_level_help_says_what_the_tool_does():
    r = run("--help")
    assert r.returncode == 0
    head = r.stdout.split("positional arguments")[0]
    assert "text, images and audio" in head and "command-line entry point" not in r.stdout
    for command in ("quickstart", "data", "tokenizer", "vocab", "plot", "export", "generate", "eval", "ship-demo"):
        assert f"\n    {command}" in r.stdout
    assert "chameleon-lite generate --prompt" in r.stdout.split("positional arguments")[1]


def test_unknown_command_is_one_line_error():
    r = run("no-such-command")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "invalid choice" in r.stderr


def test_missing_argument_is_one_line_error():
    r = run("data", "validate")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_user_error_is_one_line(tmp_path):
    r = run("data", "validate", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and "manifest not found" in r.stdout + r.stderr
    r = run("vocab", "--show", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and r.stderr.strip().startswith("chameleon-lite: error:") and r.stderr.count("\n") == 1


def test_vocab_command(tmp_path):
    r = run(
        "vocab",
        "--text-size",
        "300",
        "--image-codebook",
        "64",
        "--audio-levels",
        "2",
        "--audio-codebook",
        "32",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    r = run("vocab", "--show", str(tmp_path))
    assert r.returncode == 0 and "audio" in r.stdout


def _options(parser, prefix=()):
    """(command path, option string, action) for every option of every command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, prefix + (name,))
        elif action.option_strings and action.type is not None:
            yield prefix, action.option_strings[-1], action


NUMERIC = [
    (p, o, a)
    for p, o, a in _options(build_parser())
    if getattr(a.type, "__name__", "") in ("int", "float", "integer", "number")
]


def test_numeric_flags_are_checked_when_parsed():
    """Every number flag goes through argtypes (int_range/float_range with stated bounds), never a bare int/float
    whose bad values (-2 threads, 0 tokens per shard) reach the command's work as a traceback."""
    bare = [" ".join(p) + " " + o for p, o, a in NUMERIC if a.type in (int, float)]
    assert NUMERIC and not bare, bare


@pytest.mark.parametrize(
    "path,option", [(p, o) for p, o, _ in NUMERIC], ids=lambda x: " ".join(x) if isinstance(x, tuple) else x
)
def test_every_numeric_flag_refuses_non_numbers_in_one_line(path, option, capsys):
    for value in ("abc", "nan", "inf", "1e400", ""):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*path, f"{option}={value}"])
        assert e.value.code == 2, (path, option, value)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"argument {option}" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "--threads", "-2", "--prompt", "x"], "argument --threads: must be >= 0, got -2"),
        (
            ["data", "tokenize", "m.jsonl", "--tokenizers", "t", "--out", "o", "--shard-tokens", "0"],
            "argument --shard-tokens: must be >= 1024, got 0",
        ),
    ],
)
def test_flag_values_from_the_issue_are_one_line(argv, message):
    r = run(*argv)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (
        r.stderr
    )


def test_help_imports_neither_torch_nor_the_extension():
    """--help must stay fast: building the whole parser tree imports no torch, no compiled kernels."""
    code = (
        "import sys; from chameleon_lite.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('chameleon_lite._C')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
