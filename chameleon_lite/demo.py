"""The demo model shipped inside the package, so `chameleon-lite generate` works right after install.

It lives in ``chameleon_lite/assets/demo_model/``: an exported model folder (ARCHITECTURE §7) whose transformer
weights are stored in bf16 to keep the package small, plus ``RECIPE.json`` — the exact command, seed, machine and
wall times that produced it, and its evaluation numbers. :func:`ship_demo` writes it from any exported model.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from typing import Any

from chameleon_lite.errors import ConfigError

DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_model")
RECIPE_FILE = "RECIPE.json"
MAX_BYTES = 30 * 1024 * 1024


def demo_model_dir() -> str:
    """The shipped demo model folder; a clear error when this install has none."""
    if not os.path.isfile(os.path.join(DEMO_DIR, "config.json")):
        raise ConfigError(f"no demo model is shipped in this install ({DEMO_DIR}); pass --model DIR "
                          "(train one with `chameleon-lite quickstart`)")
    return DEMO_DIR


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def ship_demo(model_dir: str, recipe: dict[str, Any], out: str = DEMO_DIR, max_bytes: int = MAX_BYTES) -> str:
    """Copy an exported model into ``out`` with bf16 transformer weights and ``RECIPE.json``; refuse if the result
    would exceed ``max_bytes``. Written beside ``out`` and renamed into place."""
    import torch

    from chameleon_lite.model.io import load_model, save_model_dir
    from chameleon_lite.tokenizers.base import Tokenizers

    model = load_model(model_dir).to(torch.bfloat16)
    vocab = Tokenizers.load(model_dir).vocab
    tmp = f"{out}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(model, vocab, model_dir, tmp)
    size = folder_bytes(tmp)
    if size > max_bytes:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"{model_dir}: the demo model would take {size / 2**20:.1f} MB, more than "
                          f"{max_bytes / 2**20:.0f} MB; ship a smaller preset")
    rec = {"source": os.path.abspath(model_dir), "bytes": size, "weights_dtype": "bfloat16",
           "python": platform.python_version(), "torch": torch.__version__, **recipe}
    with open(os.path.join(tmp, RECIPE_FILE), "w") as f:
        json.dump(rec, f, indent=2)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _ship(args) -> int:
    recipe: dict[str, Any] = {}
    if args.recipe:
        with open(args.recipe) as f:
            recipe = json.load(f)
    if args.command_line:
        recipe["command"] = args.command_line
    out = ship_demo(args.model, recipe, out=args.out)
    print(f"demo model written to {out} ({folder_bytes(out) / 2**20:.1f} MB)")
    return 0


def register(cli) -> None:
    p = cli.command("ship-demo", "store an exported model (bf16) as the demo model the package ships, with its recipe",
                    _ship)
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder (e.g. runs/quickstart/model)")
    p.add_argument("--recipe", help="JSON file with how the model was made (e.g. runs/quickstart/quickstart.json)")
    p.add_argument("--command-line", help="the exact command that produced the model")
    p.add_argument("--out", default=DEMO_DIR, metavar="DIR", help="where to write it (default: inside the package)")
