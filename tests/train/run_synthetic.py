"""The trainer over the synthetic loader: `torchrun ... run_synthetic.py --data=DIR --out=RUN [--key=value]`
(DIR holds the meta.json written by synthetic.write_meta)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from synthetic import SyntheticLoader  # noqa: E402

from chameleon_lite.errors import UserError  # noqa: E402
from chameleon_lite.train.config import load_config  # noqa: E402
from chameleon_lite.train.distributed import shutdown  # noqa: E402
from chameleon_lite.train.trainer import train  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    try:
        cfg = load_config("debug", configs_dir="", overrides=args)
        train(cfg, make_loader=SyntheticLoader)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutdown()
