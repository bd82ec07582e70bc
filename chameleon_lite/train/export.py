"""A training run's checkpoint as an exported model folder (what ``chameleon-lite export`` does)."""

from __future__ import annotations

import os

from chameleon_lite.bundle import set_prompt_format
from chameleon_lite.errors import ConfigError
from chameleon_lite.files import MODEL, check_output_dir, read_json
from chameleon_lite.model.config import ModelConfig
from chameleon_lite.model.io import empty_model, save_model_dir
from chameleon_lite.train.checkpoint import latest_checkpoint, load_checkpoint
from chameleon_lite.vocab import UnifiedVocab


def export_run(
    run_dir: str, out_dir: str, tokenizers_dir: str | None = None, checkpoint: str | None = None, fmt: str | None = None
) -> str:
    """Export the newest checkpoint of a training run (or ``checkpoint``) to ``out_dir``. The tokenizer folder
    defaults to the one recorded when the run started. ``fmt="chat"`` marks a model trained on conversations in its
    generation.json (``generate`` then treats a prompt as a user turn)."""
    run_file = os.path.join(run_dir, "run.json")
    if not os.path.exists(run_file):
        raise ConfigError(f"{run_file}: not found; is {run_dir} a training run folder?")
    run = read_json(run_file, "training run record")
    for key in ("model", "vocab"):
        if not isinstance(run.get(key), dict):
            raise ConfigError(f'{run_file}: no "{key}" object; the run record is damaged')
    cfg = ModelConfig.from_dict(run["model"], source=f"{run_file} (model)")
    vocab = UnifiedVocab.from_dict(run["vocab"], source=f"{run_file} (vocab)")
    tokenizers_dir = tokenizers_dir or run.get("tokenizers") or ""
    if not tokenizers_dir:
        raise ConfigError(f"{run_dir}: the run does not record its tokenizer folder; pass --tokenizers DIR")
    ck = checkpoint or latest_checkpoint(run_dir)
    if ck is None:
        raise ConfigError(f"{run_dir}: no complete checkpoint to export")
    check_output_dir(os.path.abspath(out_dir), MODEL)  # before the weights are read
    model = empty_model(cfg, "cpu", run_file)
    load_checkpoint(ck, model)
    out = save_model_dir(model, vocab, tokenizers_dir, out_dir)
    if fmt is not None:
        set_prompt_format(out, fmt)
    return out
