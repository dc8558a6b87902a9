"""`python -m training curves`: validation PSNR over training steps of one or more runs, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.train import VAL_LOG, read_val_log


def plot_curves(runs: dict[str, Path], out: Path, reference_db: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, run_dir in runs.items():
        rows = read_val_log(run_dir)
        steps, psnr = [row["step"] for row in rows], [row["psnr"] for row in rows]
        ax.plot(steps, psnr, marker="o", markersize=3, label=f"{label} (best {max(psnr):.2f} dB)")
    if reference_db is not None:
        ax.axhline(reference_db, color="gray", linestyle="--", linewidth=1, label=f"target {reference_db} dB")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _label_and_path(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        return Path(text).name, Path(text)
    return label, Path(path)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("curves", help="plot validation PSNR over steps of training runs")
    parser.add_argument("runs", nargs="+", type=_label_and_path, metavar="[LABEL=]RUN_DIR",
                        help="run folders written by stage1/stage2/e2e (each has val.csv)")
    parser.add_argument("--out", required=True, type=Path, help="output PNG")
    parser.add_argument("--reference", type=float, default=None, help="draw a horizontal line at this PSNR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [str(path) for _, path in args.runs if not (path / VAL_LOG).exists()]
    if missing:
        raise SystemExit(f"no {VAL_LOG} in: {', '.join(missing)}")
    plot_curves(dict(args.runs), args.out, args.reference)
    print(f"wrote {args.out}")
    return 0
