"""`python -m training average`: uniform weight average of checkpoints of one run, validated.

Validation PSNR of stage 2 swings by up to a dB between checks while SSIM keeps rising: the best-PSNR
checkpoint and the end of the schedule are good in different ways. Averaging checkpoints of one
training trajectory (as in stochastic weight averaging) keeps what both learned in one network of
the same size and cost. The result is written as ``RUN/averaged.pt`` with its own validation
metrics, so `python -m training ship --checkpoint averaged` can ship it like any other checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_weights, save_weights
from model.network import FRLIE
from training.data import list_pairs
from training.errors import TrainingError
from training.evaluate import validate_model
from training.runs import AVERAGED, BEST, LAST


def average_models(paths: list[Path]) -> tuple[FRLIE, str, list[dict[str, Any]]]:
    """The network whose floating-point weights and buffers are the mean of those in ``paths``, its
    stage, and which checkpoints (file, step) went into it.

    Integer buffers (BatchNorm's batch counters) are taken from the first checkpoint. All checkpoints
    must share architecture and stage; for stage 2 the frozen encoder and decoder are identical, so
    their mean is exactly themselves.
    """
    if len(paths) < 2:
        raise TrainingError("average needs at least two checkpoints")
    loaded = [load_weights(path) for path in paths]
    first_model, first = loaded[0]
    for path, (_, payload) in zip(paths[1:], loaded[1:], strict=True):
        if payload["config"] != first["config"] or payload.get("stage") != first.get("stage"):
            raise TrainingError(f"{path} has another architecture or stage than {paths[0]}: cannot average")
    states = [model.state_dict() for model, _ in loaded]
    averaged = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            averaged[name] = torch.stack([state[name].float() for state in states]).mean(0).to(tensor.dtype)
        else:
            averaged[name] = tensor
    first_model.load_state_dict(averaged)
    sources = [
        {"file": path.name, "step": int(payload["step"])} for path, (_, payload) in zip(paths, loaded, strict=True)
    ]
    return first_model.eval(), first.get("stage", "stage2"), sources


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("average", help="average checkpoints of one run and validate the result")
    parser.add_argument("--run", required=True, type=Path, help="training run directory")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=[BEST, LAST],
        help="checkpoint files in the run to average (default: best.pt last.pt)",
    )
    parser.add_argument("--data", required=True, type=Path, help="data root; its val/ split is measured")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [args.run / name for name in args.checkpoints]
    for path in paths:
        if not path.exists():
            raise TrainingError(f"{path} not found")
    model, stage, sources = average_models(paths)
    result = validate_model(model, list_pairs(args.data / "val"), stage, torch.device("cpu"))
    metrics = {"val_psnr": result["psnr"], "val_ssim": result["ssim"]}
    step = max(source["step"] for source in sources)
    save_weights(model, args.run / AVERAGED, stage=stage, step=step, metrics=metrics, averaged_from=sources)
    described = ", ".join(f"{source['file']} (step {source['step']})" for source in sources)
    print(
        f"wrote {args.run / AVERAGED}: average of {described}; "
        f"val PSNR {metrics['val_psnr']:.3f} dB, SSIM {metrics['val_ssim']:.4f}"
    )
    return 0
