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
    r = run("vocab", "--text-size", "300", "--image-codebook", "64", "--audio-levels", "2", "--audio-codebook", "32", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    r = run("vocab", "--show", str(tmp_path))
    assert r.returncode == 0 and "audio" in r.stdout
