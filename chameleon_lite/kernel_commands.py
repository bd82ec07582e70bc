"""CLI command of the kernels (registered by chameleon_lite.cli): `chameleon-lite doctor` (the report is
chameleon_lite/ops/doctor.py; this module stays out of the ops package, whose import loads torch)."""

from __future__ import annotations

import argparse


def _doctor(args: argparse.Namespace) -> int:
    from chameleon_lite.files import check_json_output
    from chameleon_lite.ops import doctor

    if args.json:
        check_json_output(args.json)
    return doctor.main(args.json)


def register(cli) -> None:
    p = cli.command(
        "doctor",
        "print the machine (CPU ISA, GPUs), the versions, and which kernel build each op runs and whether it "
        "passed its self-check; exit 1 if one failed",
        _doctor,
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
