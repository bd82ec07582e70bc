"""Pretrain the early-fusion transformer on pretokenized shards.

    torchrun --nproc_per_node=N train/pretrain.py --config tiny --data SHARDS --out RUN [--key=value ...]
    python train/pretrain.py --config tiny --data SHARDS --out RUN          # one process

``--config`` names a file in train/configs/ (or a path to a JSON file, or a bare model preset); every field of
chameleon_lite.train.config.PretrainConfig can be overridden with ``--key=value`` and every model field with
``--model.key=value``. Re-running the same command resumes from RUN's newest checkpoint (at any world size).
See train/launch.sh for the single-CPU, 8-GPU and 2-node lines.
"""

from __future__ import annotations

import argparse
import os
import sys

from chameleon_lite.errors import UserError
from chameleon_lite.train.config import load_config
from chameleon_lite.train.distributed import shutdown
from chameleon_lite.train.trainer import train

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Any other --key=value overrides a training option."
    )
    parser.add_argument("--config", default="tiny", help="train/configs/<name>.json, a JSON path, or a model preset")
    parser.add_argument("--data", required=True, help="shard folder (made by `chameleon-lite data tokenize`)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, run.json")
    parser.add_argument("--val-data", dest="val_data", default=None, help="validation shard folder")
    args, rest = parser.parse_known_args(argv)
    base = {"data": args.data, "out": args.out}
    if args.val_data:
        base["val_data"] = args.val_data
    try:
        cfg = load_config(args.config, CONFIGS_DIR, overrides=rest, base=base)
        train(cfg)
    except UserError as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pretrain: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
