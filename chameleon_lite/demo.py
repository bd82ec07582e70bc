"""The demo model shipped inside the package, so `chameleon-lite generate` works right after install.

It lives in ``chameleon_lite/assets/demo_model/``: an exported model folder (ARCHITECTURE §7) whose transformer
weights are stored in bf16 to keep the package small, plus ``RECIPE.json`` — the exact command, seed, machine and
wall times that produced it, and its evaluation numbers — and ``generation.json``, the sampling settings those numbers
were measured with, which `generate` uses unless told otherwise. :func:`ship_demo` writes it from any exported model.
"""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any

from chameleon_lite.bundle import DEMO_DIR, GENERATION_FILE, demo_model_dir, prompt_format, read_generation  # noqa: F401  (demo_model_dir re-exported)
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import MODEL, check_output_dir, read_json, replace_dir, write_json_atomic

RECIPE_FILE = "RECIPE.json"
MAX_BYTES = 30 * 1024 * 1024


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def ship_demo(model_dir: str, recipe: dict[str, Any], out: str = DEMO_DIR, max_bytes: int = MAX_BYTES) -> str:
    """Copy an exported model into ``out`` with bf16 transformer weights and ``RECIPE.json``; refuse if the result
    would exceed ``max_bytes``. Written beside ``out`` and renamed into place."""
    import torch  # lazy: `chameleon-lite --help` imports this module

    from chameleon_lite.eval.harness import write_eval_sampling  # lazy: `chameleon-lite --help` imports this module
    from chameleon_lite.model.io import load_bundle, save_model_dir  # lazy: as above

    tmp = f"{out}.new"
    check_output_dir(out, MODEL)
    bundle = load_bundle(model_dir)
    # save_model_dir refuses a leftover tmp that is not a model folder
    save_model_dir(bundle.model.to(torch.bfloat16), bundle.tokenizers.vocab, model_dir, tmp)
    size = folder_bytes(tmp)
    if size > max_bytes:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"{model_dir}: the demo model would take {size / 2**20:.1f} MB, more than "
            f"{max_bytes / 2**20:.0f} MB; ship a smaller preset"
        )
    # generate's defaults: the sampling its recorded evaluation used, and the source's prompt format
    fmt = prompt_format(read_generation(model_dir), os.path.join(model_dir, GENERATION_FILE))
    write_eval_sampling(tmp, fmt=fmt)
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
