"""Every command in README.md (and docs/*.md) runs as written.

* The block after ``<!-- readme-commands -->`` in README.md (found the way ``.ci/run`` finds the test command) is
  run top to bottom in a fresh folder, one command at a time, with ``chameleon-lite``, ``python`` and ``torchrun``
  of this interpreter's environment: corpus -> validate -> the three tokenizers -> vocab -> tokenize -> torchrun
  pretraining -> export -> generate -> eval -> continued pretraining. Only the size flags in ``SMALL_SIZES`` are made
  smaller (each must match README exactly, so README drift fails here), and ``train/pretrain.py`` is resolved
  against the repository root. The first failing command fails the test with its exit code and stderr's tail.
* Every other ``bash`` block of README.md and docs/*.md (the install and test lines, the hours-long recipes, the
  GPU commands) is checked without running it: each ``chameleon-lite`` command parses, each script exists (and a
  ``bash`` script gets as many arguments as its usage line asks for), each ``--flag`` of a Python script is one its
  ``--help`` lists, and each path into the repository exists.
* The tokenizer trainers that README's block trains into one ``--out`` folder keep separate run folders.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
RUN_MARKER = "readme-commands"  # <!-- readme-commands --> before the ```bash block this test runs
BIN = os.path.dirname(sys.executable)  # chameleon-lite, python and torchrun of this environment

# The only changes to README's block: (README text, replacement, how many times it occurs there). Sizes only; each
# must occur exactly that often, so a README edit that drops or renames one fails here instead of running hours.
SMALL_SIZES = [
    ("--out corpus --n 6000 ", "--out corpus --n 40 ", 1),
    ("--out heldout --n 300 ", "--out heldout --n 10 ", 1),
    ("--preset tiny --steps 2500 --out tok", "--preset tiny --steps 2 --batch-size 4 --out tok", 1),
    ("--preset tiny --steps 600 --out tok", "--preset tiny --steps 2 --batch-size 2 --out tok", 1),
    ("--manifest heldout/manifest.jsonl --n 300 ", "--manifest heldout/manifest.jsonl --n 4 ", 2),
    ("--finetune-decoder tok --steps 500 ", "--finetune-decoder tok --steps 2 --batch-size 4 ", 1),
    ("--out runs/pt --steps=300", "--out runs/pt --steps=2", 1),
    ("--init_from=runs/pt/model --steps=100", "--init_from=runs/pt/model --steps=2", 1),
    ("--model runs/pt/model --n 40 ", "--model runs/pt/model --n 2 ", 1),
]
# scripts of the checkout that README's block runs by their path from the repository root (README says to run the
# block in the checkout); the test runs it in a fresh folder, so they are resolved against the repository root
REPO_SCRIPTS = [("train/pretrain.py", 2)]
# what the block must have made when every command succeeded (relative to the folder it ran in)
EXPECTED_OUTPUTS = [
    "corpus/manifest.jsonl",
    "heldout/manifest.jsonl",
    "tok/tokenizer.json",
    "tok/image_vq.json",
    "tok/audio_codec.json",
    "tok/run/image/summary.json",
    "tok/run/audio/summary.json",
    "tok2/image_vq.json",
    "tok/vocab.json",
    "shards/train/meta.json",
    "shards/val/meta.json",
    "runs/pt/run.json",
    "runs/pt/model/model.safetensors",
    "out/document.html",
    "out4",
    "runs/pt/model-eval/eval.json",
    "runs/pt2/run.json",
]
COMMAND_TIMEOUT_S = 900  # one command; at the small sizes none takes a minute on 2 cores
# top-level folders of the checkout: an argument that starts with one names a file that must exist
REPO_FOLDERS = ("chameleon_lite", "train", "bench", "tests", "docs", "tokenizers", "csrc")
# environment variables whose value the scripts pass on as flags of a chameleon-lite command
ENV_FLAGS = {"IMAGE_FLAGS": ["tokenizer", "train-image"], "AUDIO_FLAGS": ["tokenizer", "train-audio"]}


# ---------------------------------------------------------------------------------------------- reading the pages
def marked_block(path: str, marker: str) -> str:
    """The fenced ```bash block after the line ``<!-- marker -->`` (what .ci/run's readme_command awk prints)."""
    found = inblock = False
    out = []
    for line in open(path, encoding="utf-8").read().splitlines():
        if line == f"<!-- {marker} -->":
            found = True
            continue
        if found and line.startswith("```bash"):
            inblock = True
            continue
        if inblock and line.startswith("```"):
            break
        if inblock:
            out.append(line)
    return "\n".join(out)


def bash_blocks(path: str) -> list[tuple[int, str | None, str]]:
    """Every ```bash block of a markdown page: (line number of its fence, the marker comment right before it or
    None, its text)."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```bash"):
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            prev = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            m = re.fullmatch(r"<!-- (\S+) -->", prev.strip())
            blocks.append((start, m.group(1) if m else None, "\n".join(body)))
        i += 1
    return blocks


def commands(block: str) -> list[str]:
    """The command lines of a block: backslash continuations joined, blank lines and comment lines left out."""
    out, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            out.append(line.strip())
    return out


def small_block(block: str) -> str:
    """README's block with SMALL_SIZES and REPO_SCRIPTS applied; each must match exactly as often as listed."""
    for old, new, count in SMALL_SIZES:
        assert block.count(old) == count, (
            f"README's {RUN_MARKER} block holds {old!r} {block.count(old)} time(s), "
            f"SMALL_SIZES expects {count}: update SMALL_SIZES to README's commands"
        )
        block = block.replace(old, new)
    for script, count in REPO_SCRIPTS:
        assert os.path.isfile(os.path.join(REPO, script)), script
        pattern = re.compile(r"(?<![\w/.])" + re.escape(script))
        assert len(pattern.findall(block)) == count, (
            f"README's {RUN_MARKER} block runs {script} "
            f"{len(pattern.findall(block))} time(s), REPO_SCRIPTS expects {count}"
        )
        block = pattern.sub(os.path.join(REPO, script), block)
    return block


def _pages() -> list[str]:
    return [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def _checked_blocks() -> list[tuple[str, int, str]]:
    return [(page, line, text) for page in _pages() for line, _marker, text in bash_blocks(page)]


# ---------------------------------------------------------------------------------------------- the run block
def test_readme_has_the_block_and_every_small_size_matches_it():
    block = marked_block(README, RUN_MARKER)
    assert block, f"README.md has no ```bash block after <!-- {RUN_MARKER} -->"
    assert [m for _, m, _ in bash_blocks(README)].count(RUN_MARKER) == 1
    cmds = commands(small_block(block))
    steps = [c.split()[:3] for c in cmds]
    # the loop a newcomer follows, in this order
    order = [
        ["chameleon-lite", "data", "procedural"],
        ["chameleon-lite", "data", "validate"],
        ["chameleon-lite", "tokenizer", "train-text"],
        ["chameleon-lite", "tokenizer", "train-image"],
        ["chameleon-lite", "tokenizer", "train-audio"],
        ["chameleon-lite", "vocab", "--tokenizers"],
        ["chameleon-lite", "data", "tokenize"],
        ["torchrun", "--standalone", "--nproc_per_node=2"],
        ["chameleon-lite", "export", "runs/pt"],
        ["chameleon-lite", "generate", "--model"],
        ["chameleon-lite", "eval", "--model"],
    ]
    at = [steps.index(s) for s in order]
    assert at == sorted(at), "README's block runs the loop out of order"


@pytest.mark.slow
def test_readme_commands_run_in_a_fresh_folder(tmp_path):
    cmds = commands(small_block(marked_block(README, RUN_MARKER)))
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    for name in ("chameleon-lite", "python", "torchrun"):
        assert shutil.which(name, path=env["PATH"]), f"{name} not found next to {sys.executable}"
    cwd = str(tmp_path)
    t_all = time.perf_counter()
    for i, cmd in enumerate(cmds, 1):
        t0 = time.perf_counter()
        try:
            r = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", cmd],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as e:
            err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            pytest.fail(
                f"README command {i}/{len(cmds)} ran past {COMMAND_TIMEOUT_S} s:\n  {cmd}\n"
                f"stderr (tail):\n{_tail(err)}",
                pytrace=False,
            )
        if r.returncode != 0:
            pytest.fail(
                f"README command {i}/{len(cmds)} failed with exit code {r.returncode}:\n  {cmd}\n"
                f"stderr (tail):\n{_tail(r.stderr)}\nstdout (tail):\n{_tail(r.stdout, 800)}",
                pytrace=False,
            )
        print(f"[{i:2d}/{len(cmds)}] {time.perf_counter() - t0:6.1f} s  {cmd.replace(REPO + os.sep, '')}")
    print(f"all {len(cmds)} README commands: {time.perf_counter() - t_all:.1f} s")
    missing = [p for p in EXPECTED_OUTPUTS if not os.path.exists(os.path.join(cwd, p))]
    assert not missing, f"README's commands all succeeded but did not make {missing}"


def _tail(text: str, n: int = 3000) -> str:
    text = text.replace("\r", "\n")  # progress bars
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines)[-n:]


# ---------------------------------------------------------------------------------------------- every other block
@pytest.mark.parametrize(
    "page,line,block", _checked_blocks(), ids=[f"{os.path.relpath(p, REPO)}:{n}" for p, n, _ in _checked_blocks()]
)
def test_every_command_block_names_commands_scripts_and_flags_that_exist(page, line, block):
    problems = []
    for cmd in commands(block):
        for segment in re.split(r"\s&&\s", cmd):
            problems += [
                f"{os.path.relpath(page, REPO)}:{line}: {segment.strip()}\n  {p}" for p in check_segment(segment)
            ]
    assert not problems, "\n".join(problems)


def check_segment(segment: str) -> list[str]:
    """What is wrong with one simple command of a page, found without running it (empty when nothing)."""
    words = shlex.split(segment, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    if not words:
        return []
    prog, args = words[0], words[1:]
    problems = [
        f"{a} does not exist in the repository" for a in args if _repo_path(a) and not os.path.exists(_repo_path(a))
    ]
    if prog == "chameleon-lite":
        problems += _parse_cli(args)
    elif prog == "bash":
        problems += _check_bash_script(args)
        for var, cmd in ENV_FLAGS.items():
            if var in env:
                problems += _parse_cli([*cmd, "--manifest", "m.jsonl", "--out", "o", *shlex.split(env[var])])
    elif prog in ("python", "python3"):
        if args and args[0].endswith(".py"):
            problems += _check_python_script(args[0], args[1:])
        elif args[:2] not in (["-m", "pytest"], ["-m", "venv"]):  # pytest: its paths are checked above
            problems.append(f"the test does not know how to check `{prog} {' '.join(args[:2])}`")
    elif prog == "torchrun":
        at = next((i for i, a in enumerate(args) if a.endswith(".py")), None)
        if at is None:
            problems.append("torchrun runs no .py script")
        else:
            problems += _check_python_script(args[at], args[at + 1 :])
    elif prog == "curl":
        problems += _check_curl(args)
    elif prog not in ("pip", ".", "source", "cd", "mkdir"):  # installing and moving around: nothing to check here
        problems.append(f"the test does not know how to check `{prog}`: teach check_segment")
    return problems


def _check_curl(args: list[str]) -> list[str]:
    """A curl line of the serve API: its URL is one of the app's routes and each -F field one the API reads."""
    from starlette.routing import Match

    from chameleon_lite.serve.app import FIELDS, make_app

    class _Sched:  # make_app reads only .gen for the defaults; the routes are what is checked
        gen = type("G", (), {"default_config": lambda self: None})()

    with tempfile.TemporaryDirectory() as tmp:  # the app makes its output folder; the routes are all it is for
        routes = make_app(_Sched(), os.path.join(tmp, "s")).routes
    problems = []
    for a in args:
        if a.startswith("http://"):
            path = "/" + a.split("/", 3)[3] if a.count("/") >= 3 else "/"
            method = "POST" if any(x in ("-F", "-d", "--data") for x in args) else "GET"
            scope = {"type": "http", "path": path, "method": method}
            if not any(r.matches(scope)[0] == Match.FULL for r in routes):
                problems.append(f"{method} {path} is not a route of the serve app")
    fields = [args[i + 1].split("=", 1)[0] for i, a in enumerate(args[:-1]) if a == "-F"]
    problems += [f"-F {f}: not a field of POST /api/generate" for f in fields if f not in FIELDS]
    return problems


def _repo_path(arg: str) -> str | None:
    arg = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
    first = arg.split("/", 1)[0]
    return os.path.join(REPO, arg) if "/" in arg and first in REPO_FOLDERS else None


def _parse_cli(args: list[str]) -> list[str]:
    import contextlib
    import io

    from chameleon_lite.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as e:
        return [f"chameleon-lite {' '.join(args)}: does not parse (exit {e.code}): {err.getvalue().strip()}"]
    return []


def _check_bash_script(args: list[str]) -> list[str]:
    if not args or not os.path.isfile(os.path.join(REPO, args[0])):
        return [f"bash runs {args[:1]}, which is not a script of the repository"]
    script, given = os.path.join(REPO, args[0]), len(args) - 1
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    if r.returncode:
        return [f"{args[0]}: bash -n: {r.stderr.strip()}"]
    # the usage line in the script's header comment, e.g. "#   bash train/x.sh FROM OUT SEED [SIZE]"
    usage = re.search(r"^#\s+bash\s+" + re.escape(args[0]) + r"(.*)$", open(script).read(), re.M)
    if usage is None:
        return [f"{args[0]} has no usage line `#   bash {args[0]} ARG ...` to check the arguments against"]
    words = usage.group(1).split("(")[0].split()
    need, most = sum(not w.startswith("[") for w in words), len(words)
    if not need <= given <= most:
        return [f"{args[0]} takes {need} to {most} arguments ({' '.join(words)}), README gives {given}"]
    return []


_HELP: dict[str, str] = {}


def _check_pretrain(path: str, args: list[str]) -> list[str]:
    """train/pretrain.py's own argument parsing and config loading (--key=value overrides included), minus the
    training."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("_readme_pretrain", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seen = []
    mod.train, mod.shutdown = seen.append, lambda: None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = mod.main(args)
    except SystemExit as e:
        rc = e.code
    if rc or not seen:
        return [f"train/pretrain.py {' '.join(args)}: exit {rc}: {err.getvalue().strip()}"]
    return []


# scripts whose arguments are checked by their own parser rather than against their --help
SCRIPT_CHECKS = {"train/pretrain.py": _check_pretrain}


def _check_python_script(script: str, args: list[str]) -> list[str]:
    path = os.path.join(REPO, script)
    if not os.path.isfile(path):
        return [f"{script} is not a script of the repository"]
    if script in SCRIPT_CHECKS:
        return SCRIPT_CHECKS[script](path, args)
    if script not in _HELP:
        r = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=120)
        if r.returncode:
            return [f"{script} --help failed ({r.returncode}): {r.stderr.strip()[-500:]}"]
        _HELP[script] = r.stdout
    return [
        f"{script} --help does not list {a.split('=')[0]}"
        for a in args
        if a.startswith("--") and not re.search(re.escape(a.split("=")[0]) + r"\b", _HELP[script])
    ]


# ---------------------------------------------------------------------------------------------- the run folders
# tokenizers small enough to train a step in a moment (as tests/tokenizers/ build them)
IMAGE_SMALL = dict(image_size=16, channels=(8, 8, 8), dec_channels=(8, 8, 8), codebook_size=16, codebook_dim=4)
AUDIO_SMALL = dict(
    strides=(4, 4, 4),
    channels=(4, 8, 8),
    dec_channels=(4, 8, 8),
    out_channels=4,
    res_blocks=1,
    latent_dim=8,
    codebook_dim=8,
    num_levels=2,
    codebook_size=16,
    kmeans_iters=2,
)


def _image_cfg(steps: int, **kw):
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig

    return ImageVQTrainConfig(
        model_overrides={**IMAGE_SMALL, **kw},
        steps=steps,
        batch_size=4,
        warmup=1,
        log_every=1,
        ckpt_every=1,
        grid_every=1,
    )


def _audio_cfg(steps: int):
    from chameleon_lite.tokenizers.audio_train import AudioCodecTrainConfig

    return AudioCodecTrainConfig(
        model_overrides=AUDIO_SMALL,
        steps=steps,
        batch_size=2,
        segment_frames=16,
        warmup=1,
        log_every=1,
        ckpt_every=1,
        sample_every=1,
    )


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from chameleon_lite.data.procedural import write_corpus

    return write_corpus(str(tmp_path_factory.mktemp("corpus")), 8, seed=0, progress=False)


def _logged_steps(run: str) -> list[int]:
    return [json.loads(line)["step"] for line in open(os.path.join(run, "log.jsonl"))]


def test_image_and_audio_tokenizers_trained_into_one_folder_keep_their_own_runs(small_corpus, tmp_path):
    """README trains the image tokenizer and then the audio codec with --out tok: the codec used to find the image
    tokenizer's checkpoint in tok/run and stop ("checkpoint was trained with a different model config")."""
    from chameleon_lite.tokenizers.audio import AudioTokenizer
    from chameleon_lite.tokenizers.image import ImageTokenizer
    from chameleon_lite.train.checkpoint import latest_checkpoint, read_train_state
    from chameleon_lite.train.tokenizer_loop import train_audio_codec, train_image_vq

    out = str(tmp_path / "tok")
    train_image_vq(small_corpus, out, _image_cfg(1), progress=False)
    train_audio_codec(small_corpus, out, _audio_cfg(1), progress=False)
    train_image_vq(small_corpus, out, _image_cfg(2), progress=False)  # each resumes its own run
    train_audio_codec(small_corpus, out, _audio_cfg(2), progress=False)
    for kind in ("image", "audio"):
        run = os.path.join(out, "run", kind)
        assert _logged_steps(run) == [1, 2], kind
        assert read_train_state(latest_checkpoint(run))["step"] == 2
        assert json.load(open(os.path.join(run, "summary.json")))["steps"] == 2
    assert ImageTokenizer.load(out).tokens_per_image == 4 and AudioTokenizer.load(out).num_levels == 2
    from chameleon_lite.errors import ConfigError

    with pytest.raises(ConfigError, match=r"different model config.*delete .*run[/\\]image to train from scratch"):
        train_image_vq(small_corpus, out, _image_cfg(3, codebook_size=8), progress=False)


def test_a_run_folder_of_the_old_checkpoint_format_is_refused_in_one_line(small_corpus, tmp_path, capsys):
    """Tokenizer runs before the shared training loop kept run/<kind>/checkpoint (or, older, run/checkpoint) with a
    state.json: such a checkpoint of this kind is refused with one line saying what to do; the other kind trains."""
    from chameleon_lite.cli import main
    from chameleon_lite.files import write_json_atomic
    from chameleon_lite.train.tokenizer_loop import train_audio_codec

    out = str(tmp_path / "tok")
    train_audio_codec(small_corpus, out, _audio_cfg(1), progress=False)
    argv = ["tokenizer", "train-image", "--manifest", small_corpus, "--out", out, "--steps", "1"]
    for old in ("checkpoint", os.path.join("image", "checkpoint")):
        path = os.path.join(out, "run", old)
        os.makedirs(path)
        write_json_atomic(os.path.join(path, "state.json"), {"step": 1, "model_config": IMAGE_SMALL})
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "older chameleon-lite" in err and f"delete {path}" in err
        if old == "checkpoint":  # the image tokenizer's: the audio codec's run goes on
            train_audio_codec(small_corpus, out, _audio_cfg(2), progress=False)
            assert _logged_steps(os.path.join(out, "run", "audio")) == [1, 2]
        shutil.rmtree(path)
