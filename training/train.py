"""Two-stage FRLIE training (stage1, stage2) and the end-to-end "w/o FR" ablation (e2e).

One loop serves all three; what differs per stage is which parameters train, what goes in, and
which loss applies (see ``StageStep``). Runs plain or under ``torchrun`` (DistributedDataParallel).
Every run is resumable: ``last.pt`` holds model, optimizer, schedule, step and RNG state.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from model.checkpoint import load_weights, read_checkpoint, save_weights
from model.network import FRLIE, FRLIEConfig
from training import distributed as dist_utils
from training.data import EXPOSURE_VARIANTS, ExposureMix, ImagePair, PairedImages, list_pairs
from training.evaluate import evaluate_exposures, evaluate_model
from training.inference import model_enhancer
from training.losses import LossTerms, reconstruction_loss, restoration_loss

STAGES = ("stage1", "stage2", "e2e")
STAGE_HELP = {
    "stage1": "train encoder + decoder to reconstruct normal-light images (100 x MSE)",
    "stage2": "freeze encoder + decoder from a stage-1 checkpoint, train FRNet (dark -> bright features)",
    "e2e": 'ablation "w/o FR": the whole network end to end on low -> high, no feature matching loss',
}
LAST, BEST = "last.pt", "best.pt"
VAL_LOG = "val.csv"


def validate_model(
    model: FRLIE, pairs: Sequence[ImagePair], stage: str, device: torch.device, exposures: bool = False
) -> dict[str, float]:
    """Mean PSNR / SSIM of whole 8-bit outputs over ``pairs`` (stage 1: reconstruction of high).

    With ``exposures`` (not for stage 1) every variant of ``EXPOSURE_VARIANTS`` is scored too
    (``psnr_low_x2``...), and ``score`` (what selects the best checkpoint) is the mean PSNR over
    the variants instead of the plain low -> high PSNR.
    """
    model.eval()
    net = model
    if stage == "stage1":
        net, pairs = model.reconstruct, [ImagePair(p.name, low=p.high, high=p.high) for p in pairs]
    with torch.no_grad():
        enhancer = model_enhancer(net, device)
        if not exposures or stage == "stage1":
            mean = evaluate_model(enhancer, pairs, baselines=None, with_niqe=False, progress=False)["mean"]
            return {"psnr": mean["psnr"], "ssim": mean["ssim"], "score": mean["psnr"]}
        rows = evaluate_exposures(enhancer, pairs, progress=False)
    result = {"psnr": rows["low"]["psnr"], "ssim": rows["low"]["ssim"]}
    for name, scores in rows.items():
        if name != "low":
            result["psnr_" + name.replace(" ", "_")] = scores["psnr"]
    result["score"] = float(np.mean([scores["psnr"] for scores in rows.values()]))
    return result


def read_val_log(run_dir: Path) -> list[dict[str, Any]]:
    """The rows a run appended to ``val.csv`` (step, psnr, ssim, best), typed and in step order."""
    with (run_dir / VAL_LOG).open() as handle:
        rows = [{"step": int(r["step"]), "psnr": float(r["psnr"]), "ssim": float(r["ssim"]), "best": int(r["best"])}
                for r in csv.DictReader(handle)]
    return sorted(rows, key=lambda row: row["step"])


class StageStep(nn.Module):
    """The trainable forward pass of one stage, as a module so DDP can wrap it.

    Returns (output image, target image, restored features or None, target features or None).
    """

    def __init__(self, model: FRLIE, stage: str) -> None:
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, low: torch.Tensor, high: torch.Tensor):
        if self.stage == "stage1":
            return self.model.reconstruct(high), high, None, None
        if self.stage == "e2e":
            return self.model(low), high, None, None
        with torch.no_grad():  # E is frozen: both feature maps are constants for FRNet.
            target_features = self.model.encoder(high)
            dark_features = self.model.encoder(low)
        restored = self.model.frnet(dark_features)
        return self.model.decoder(restored), high, restored, target_features


def trainable_parts(model: FRLIE, stage: str) -> list[nn.Module]:
    return {"stage1": [model.encoder, model.decoder], "stage2": [model.frnet], "e2e": [model]}[stage]


def frozen_parts(model: FRLIE, stage: str) -> list[nn.Module]:
    return [model.encoder, model.decoder] if stage == "stage2" else []


def state_digest(modules: list[nn.Module]) -> str:
    """SHA-256 over parameters AND buffers (BatchNorm statistics): proof that frozen parts never moved."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def lr_factor(step: int, total_steps: int, schedule: str, decay_at: float, final_ratio: float) -> float:
    """Multiplier on the base lr: 'step' drops to final_ratio at decay_at (the paper), 'cosine' anneals to it."""
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return 1.0 if step < decay_at * total_steps else final_ratio
    progress = min(1.0, step / max(1, total_steps))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class Trainer:
    """Owns one training run: model, data, optimizer, schedule, logs and checkpoints."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stage: str = args.stage
        self.out = Path(args.out)
        self.ctx = dist_utils.init_distributed(args.device)
        if args.device == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        else:
            self.device = torch.device("cpu")
        if args.threads:
            torch.set_num_threads(args.threads)
        seed_everything(args.seed + self.ctx.rank)

        resume_path = self.out / LAST
        resume = read_checkpoint(resume_path) if args.resume and resume_path.exists() else None
        self.model = self._build_model(resume).to(self.device)
        # Only the parts this stage trains take gradients (DDP also insists every such part is used).
        self.model.requires_grad_(False)
        for part in trainable_parts(self.model, self.stage):
            part.requires_grad_(True)
        params = [p for part in trainable_parts(self.model, self.stage) for p in part.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=args.lr, betas=tuple(args.adam_betas))
        # EMA of what trains (frozen parts stay bit-identical): validated, and saved as best.pt.
        self.ema = (
            AveragedModel(nn.ModuleList(trainable_parts(self.model, self.stage)),
                          multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
            if args.ema > 0 else None
        )
        final_ratio = args.lr_final / args.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, args.steps, args.lr_schedule, args.decay_at, final_ratio)
        )
        self.step = 0
        self.best_psnr = -math.inf
        self.validated_at = -1
        self.elapsed_before = 0.0  # training seconds spent by earlier runs of a resumed job
        if resume is not None:
            self._restore(resume)
        self.frozen_digest = state_digest(frozen_parts(self.model, self.stage))

        step_module = StageStep(self.model, self.stage)
        self.forward = (
            DistributedDataParallel(step_module)
            if self.ctx.enabled
            else step_module
        )
        data_root = Path(args.data)
        exposure = ExposureMix(  # the options exist for stage 2 only
            identity=getattr(args, "exposure_identity", 0.0), gain=getattr(args, "exposure_gain", 0.0),
            max_gain=getattr(args, "exposure_max_gain", 10.0), gamma=getattr(args, "exposure_gamma", 0.0),
        )
        self.train_set = PairedImages(data_root / "train", crop=args.crop, augment=True, rotate=args.rotate,
                                      exposure=exposure)
        self.sampler = (
            DistributedSampler(self.train_set, seed=args.seed, drop_last=True) if self.ctx.enabled else None
        )
        self.loader = DataLoader(
            self.train_set,
            batch_size=args.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        if len(self.loader) == 0:
            raise SystemExit(f"{len(self.train_set)} training pairs are fewer than one batch of {args.batch_size}")
        self.val_pairs = list_pairs(data_root / "val")[: args.val_limit or None] if self.ctx.is_main else []

    # --- setup -------------------------------------------------------------------------------
    def _build_model(self, resume: dict[str, Any] | None) -> FRLIE:
        """A resumed run rebuilds what it saved; stage 2 starts from stage-1 encoder/decoder weights."""
        args = self.args
        if resume is not None:
            return FRLIE(FRLIEConfig.from_dict(resume["config"]))
        config = FRLIEConfig(width=args.width, fr_blocks=args.fr_blocks, upsample=args.upsample)
        if args.init:  # warm start: every part from a trained model (e.g. the shipped weights)
            model, _ = load_weights(args.init)
            return model
        if self.stage != "stage2":
            return FRLIE(config)
        if not args.stage1:
            raise SystemExit("stage2 needs --stage1 CHECKPOINT (the encoder/decoder trained by stage1) or --init")
        pretrained, _ = load_weights(args.stage1)
        config = FRLIEConfig(pretrained.config.width, args.fr_blocks, pretrained.config.upsample)
        model = FRLIE(config)
        model.encoder.load_state_dict(pretrained.encoder.state_dict())
        model.decoder.load_state_dict(pretrained.decoder.state_dict())
        return model

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload.get("stage") != self.stage:
            raise SystemExit(f"{self.out / LAST} is a {payload.get('stage')} checkpoint, not {self.stage}")
        self.model.load_state_dict(payload["model"])
        if self.ema is not None and payload.get("ema") is not None:
            self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = int(payload["step"])
        self.best_psnr = float(payload.get("best_psnr", -math.inf))
        self.elapsed_before = float(payload.get("elapsed_s", 0.0))
        if "rng" in payload and not self.ctx.enabled:
            _set_rng_state(payload["rng"])

    def set_train_mode(self) -> None:
        """Train mode for what learns; frozen parts stay in eval so BatchNorm statistics never move."""
        self.model.train()
        for module in frozen_parts(self.model, self.stage):
            module.eval()

    def autocast(self):
        precision = self.args.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        args = self.args
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        dist_utils.barrier(self.ctx)
        deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else math.inf
        scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16" and self.device.type == "cuda")
        progress = tqdm(
            total=args.steps,
            initial=self.step,
            desc=self.stage,
            disable=not self.ctx.is_main or args.quiet,
            dynamic_ncols=True,
        )
        running: dict[str, float] = {}
        self.started = time.monotonic()
        stop_reason = "steps"
        epoch = self.step // max(1, len(self.loader))
        self.set_train_mode()
        while self.step < args.steps:
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            for low, high in self.loader:
                terms = self._train_step(low, high, scaler)
                self.step += 1
                for key, value in {"loss": terms.total.item(), **terms.parts}.items():
                    running[key] = running.get(key, 0.0) + value
                progress.update(1)
                if self.step % args.log_every == 0 or self.step == args.steps:
                    count = args.log_every if self.step % args.log_every == 0 else self.step % args.log_every
                    means = {k: v / count for k, v in running.items()}
                    running.clear()
                    progress.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                    self._log_train(means)
                if args.val_every and self.step % args.val_every == 0:
                    self._validate_and_save()
                    self.set_train_mode()
                elif self.step % args.save_every == 0:
                    self._save_last()
                out_of_time = dist_utils.any_rank(time.monotonic() >= deadline, self.ctx, self.device)
                if out_of_time or self.step >= args.steps:
                    stop_reason = "time budget" if out_of_time and self.step < args.steps else "steps"
                    break
            if stop_reason == "time budget":
                break
            epoch += 1
        progress.close()
        result = self._validate_and_save() if self.validated_at != self.step else None
        if self.ctx.is_main and not args.quiet:
            print(f"{self.stage}: stopped at step {self.step}/{args.steps} ({stop_reason}); best val PSNR "
                  f"{self.best_psnr:.3f} dB; checkpoints in {self.out}")
        dist_utils.barrier(self.ctx)
        dist_utils.shutdown(self.ctx)
        return {"step": self.step, "best_psnr": self.best_psnr, "stop_reason": stop_reason, **(result or {})}

    def _train_step(self, low: torch.Tensor, high: torch.Tensor, scaler: torch.amp.GradScaler) -> LossTerms:
        low, high = low.to(self.device, non_blocking=True), high.to(self.device, non_blocking=True)
        with self.autocast():
            output, target, restored, target_features = self.forward(low, high)
        if self.stage == "stage1":
            terms = reconstruction_loss(output.float(), target)
        else:
            terms = restoration_loss(output, target, restored, target_features)
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        scaler.step(self.optimizer)
        scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(nn.ModuleList(trainable_parts(self.model, self.stage)))
        return terms

    # --- validation, logs and checkpoints ----------------------------------------------------
    def evaluated_model(self) -> FRLIE:
        """What validation scores and ``best.pt`` holds: the EMA weights when --ema is on, else the model."""
        if self.ema is None:
            return self.model
        averaged = copy.deepcopy(self.model)
        for part, ema_part in zip(trainable_parts(averaged, self.stage), self.ema.module):
            part.load_state_dict(ema_part.state_dict())
        return averaged

    def _validate_and_save(self) -> dict[str, float] | None:
        result = None
        self.validated_at = self.step
        if self.ctx.is_main:
            evaluated = self.evaluated_model()
            result = validate_model(evaluated, self.val_pairs, self.stage, self.device,
                                    exposures=getattr(self.args, "val_exposures", False))
            improved = result["score"] > self.best_psnr
            metrics = {"val_" + key: value for key, value in result.items()}
            if improved:
                self.best_psnr = result["score"]
                save_weights(evaluated, self.out / BEST, stage=self.stage, step=self.step, metrics=metrics)
            extra = {key: round(value, 4) for key, value in result.items() if key.startswith("psnr_")}
            self._append_csv(VAL_LOG, {"step": self.step, "psnr": round(result["psnr"], 4),
                                         "ssim": round(result["ssim"], 5), "best": int(improved), **extra})
            if not self.args.quiet:
                shown = "".join(f", {key[5:]} {value:.2f}" for key, value in extra.items())
                tqdm.write(f"[{self.stage}] step {self.step}: val PSNR {result['psnr']:.3f} dB, "
                           f"SSIM {result['ssim']:.4f}{shown}{'  (best)' if improved else ''}")
        self._save_last()
        return result

    def _save_last(self) -> None:
        if self.ctx.is_main:
            if state_digest(frozen_parts(self.model, self.stage)) != self.frozen_digest:
                raise RuntimeError("frozen encoder/decoder changed during stage 2: this is a bug")
            save_weights(
                self.model, self.out / LAST, stage=self.stage, step=self.step, best_psnr=self.best_psnr,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
                rng=_rng_state(), args=vars(self.args), elapsed_s=self.elapsed(), world_size=self.ctx.world_size,
            )
        dist_utils.barrier(self.ctx)

    def elapsed(self) -> float:
        """Wall seconds of training across all resumed runs of this job."""
        return self.elapsed_before + time.monotonic() - self.started

    def _log_train(self, means: dict[str, float]) -> None:
        if self.ctx.is_main:
            row = {"step": self.step, "elapsed_s": round(self.elapsed(), 1), "lr": self.scheduler.get_last_lr()[0]}
            self._append_csv("train.csv", {**row, **{k: round(v, 6) for k, v in means.items()}})

    def _append_csv(self, name: str, row: dict[str, Any]) -> None:
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


def _add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument("--data", required=True, type=Path, help="data root with train/ and val/ (LOL layout)")
    parser.add_argument("--out", required=True, type=Path, help="run folder: checkpoints and CSV logs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=20000, help="optimizer steps in total (default 20000)")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop cleanly and save after this long")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="per process (paper: 16)")
    parser.add_argument("--crop", type=int, default=192, help="random square crop size (paper: 192)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lr-final", type=float, default=2e-5)
    parser.add_argument("--lr-schedule", choices=("step", "cosine", "constant"), default="step",
                        help="'step' (paper): drop to --lr-final at --decay-at; 'cosine': anneal to it")
    parser.add_argument("--decay-at", type=float, default=0.5, help="fraction of --steps where 'step' decays")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast: bf16 on CPU or CUDA, fp16 (with grad scaling) on CUDA")
    parser.add_argument("--width", type=int, default=32, help="base width C (features have 4C channels)")
    parser.add_argument("--fr-blocks", type=int, default=4)
    parser.add_argument("--upsample", choices=("pixelshuffle", "bilinear"), default="pixelshuffle")
    parser.add_argument("--val-every", type=int, default=500, help="validate (and save best) every N steps; 0: only at the end")
    parser.add_argument("--val-limit", type=int, default=0, help="validate on the first N val pairs only (0: all)")
    parser.add_argument("--save-every", type=int, default=100, help="write last.pt every N steps")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument("--adam-betas", type=float, nargs=2, default=(0.5, 0.9), metavar=("B1", "B2"),
                        help="Adam betas (paper: 0.5 0.9)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="EMA decay of the trained weights (e.g. 0.999); the EMA is validated and saved as best")
    parser.add_argument("--rotate", action="store_true", help="add 90-degree rotations to the flips (8-way)")
    parser.add_argument("--init", type=Path, help="warm start every part from this checkpoint (e.g. model/weights/frlie.pt)")
    if stage == "stage2":
        parser.add_argument("--stage1", type=Path, help="stage-1 checkpoint providing the frozen encoder/decoder")
        group = parser.add_argument_group("exposure robustness (beyond the paper)")
        group.add_argument("--exposure-identity", type=float, default=0.0,
                           help="share of samples whose input is the normal-light image itself")
        group.add_argument("--exposure-gain", type=float, default=0.0,
                           help="share of samples whose low image is brightened by a log-uniform gain")
        group.add_argument("--exposure-max-gain", type=float, default=10.0, help="largest gain (default 10)")
        group.add_argument("--exposure-gamma", type=float, default=0.0,
                           help="probability of an extra random gamma in [0.6, 1] on a gain sample")
        group.add_argument("--val-exposures", action="store_true",
                           help="validate on the exposure variants too and select the best on their mean PSNR")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    for stage in STAGES:
        parser = subparsers.add_parser(stage, help=STAGE_HELP[stage], description=STAGE_HELP[stage])
        _add_arguments(parser, stage)
        parser.set_defaults(func=run, stage=stage)


def run(args: argparse.Namespace) -> int:
    if args.precision == "fp16" and args.device != "cuda":
        raise SystemExit("--precision fp16 needs --device cuda (use bf16 on CPU)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    Trainer(args).fit()
    return 0
