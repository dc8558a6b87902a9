"""`python -m training SUBCOMMAND ...`: stage1, stage2, e2e, evaluate, niqe, export, average, ship, curves, qat."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from training.errors import TrainingError


def build_parser() -> argparse.ArgumentParser:
    # Imported here so `--help` of one command does not pay for the others' imports twice.
    from training import average, calibrate, curves, evaluate, export, niqe, qat, ship, train

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (train, evaluate, calibrate, niqe, export, average, ship, curves, qat):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a ``TrainingError`` becomes its message on stderr and its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
