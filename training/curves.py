"""`python -m training curves`: validation PSNR over training steps of one or more runs, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.errors import TrainingError
from training.figures import plot_curves
from training.runs import VAL_LOG


def _label_and_path(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        return Path(text).name, Path(text)
    return label, Path(path)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("curves", help="plot validation PSNR over steps of training runs")
    parser.add_argument(
        "runs",
        nargs="+",
        type=_label_and_path,
        metavar="[LABEL=]RUN_DIR",
        help="run folders written by stage1/stage2/e2e (each has val.csv)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output PNG")
    parser.add_argument("--reference", type=float, default=None, help="draw a horizontal line at this PSNR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [str(path) for _, path in args.runs if not (path / VAL_LOG).exists()]
    if missing:
        raise TrainingError(f"no {VAL_LOG} in: {', '.join(missing)}")
    plot_curves(dict(args.runs), args.out, args.reference)
    print(f"wrote {args.out}")
    return 0
