"""Entry point for the trainer over the synthetic loader: `torchrun ... run_synthetic.py --out RUN [--key=value]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from synthetic import SyntheticLoader, write_meta  # noqa: E402

from chameleon_lite.errors import UserError  # noqa: E402
from chameleon_lite.train.config import load_config  # noqa: E402
from chameleon_lite.train.distributed import shutdown  # noqa: E402
from chameleon_lite.train.trainer import train  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    data = next(a.split("=", 1)[1] for a in args if a.startswith("--data="))
    if int(os.environ.get("RANK", "0")) == 0:
        write_meta(data)
    try:
        cfg = load_config("debug", configs_dir="", overrides=args)
        train(cfg, make_loader=SyntheticLoader)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutdown()
