"""Two-stage FRLIE training (stage1, stage2) and the end-to-end "w/o FR" ablation (e2e).

One loop serves all three; what differs per stage is which parameters train, what goes in, and
which loss applies (see ``StageStep``). A run is configured by a ``TrainConfig`` (training/config.py:
its flags and presets) and writes a run folder (training/runs.py). Runs plain or under ``torchrun``
(DistributedDataParallel). Every run is resumable: ``last.pt`` holds model, optimizer, schedule, step and RNG state.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import random
import time
from contextlib import AbstractContextManager, nullcontext
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
from training.colour_mix import ColourMix
from training.config import STAGES, TrainConfig, add_arguments, config_from_args
from training.data import ExposureMix, PairedImages, list_pairs
from training.errors import TrainingError
from training.evaluate import validate_model
from training.losses import LossTerms, reconstruction_loss, restoration_loss
from training.normalisation import ExposureNormalisation
from training.runs import BEST, LAST, TRAIN_LOG, VAL_LOG, append_row, snapshot_name

STAGE_HELP = {
    "stage1": "train encoder + decoder to reconstruct normal-light images (100 x MSE)",
    "stage2": "freeze encoder + decoder from a stage-1 checkpoint, train FRNet (dark -> bright features)",
    "e2e": 'ablation "w/o FR": the whole network end to end on low -> high, no feature matching loss',
}


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
    parts: dict[str, list[nn.Module]] = {
        "stage1": [model.encoder, model.decoder],
        "stage2": [model.frnet],
        "e2e": [model],
    }
    return parts[stage]


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

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.stage: str = config.stage
        self.out = config.out
        self.ctx = dist_utils.init_distributed(config.device)
        if config.device == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        else:
            self.device = torch.device("cpu")
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed + self.ctx.rank)

        resume_path = self.out / LAST
        resume = read_checkpoint(resume_path) if config.resume and resume_path.exists() else None
        self.model = self._build_model(resume).to(self.device)
        # Only the parts this stage trains take gradients (DDP also insists every such part is used).
        self.model.requires_grad_(False)
        for part in trainable_parts(self.model, self.stage):
            part.requires_grad_(True)
        params = [p for part in trainable_parts(self.model, self.stage) for p in part.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.adam_betas)
        # EMA of what trains (frozen parts stay bit-identical): validated, and saved as best.pt.
        self.ema = (
            AveragedModel(
                nn.ModuleList(trainable_parts(self.model, self.stage)),
                multi_avg_fn=get_ema_multi_avg_fn(config.ema),
                use_buffers=True,
            )
            if config.ema > 0
            else None
        )
        final_ratio = config.lr_final / config.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.steps, config.lr_schedule, config.decay_at, final_ratio)
        )
        self.step = 0
        self.best_psnr = -math.inf
        self.validated_at = -1
        self.elapsed_before = 0.0  # training seconds spent by earlier runs of a resumed job
        if resume is not None:
            self._restore(resume)
        self.frozen_digest = state_digest(frozen_parts(self.model, self.stage))

        step_module = StageStep(self.model, self.stage)
        self.forward = DistributedDataParallel(step_module) if self.ctx.enabled else step_module
        self.teacher = self._load_teacher()
        data_root = config.data
        exposure = ExposureMix(  # the options exist for stage 2 only
            identity=config.exposure_identity,
            gain=config.exposure_gain,
            max_gain=config.exposure_max_gain,
            gamma=config.exposure_gamma,
        )
        self.normalisation = ExposureNormalisation(
            config.exposure_reference, config.exposure_power, config.exposure_noise_reference
        )
        self.train_set = PairedImages(
            data_root / "train",
            crop=config.crop,
            augment=True,
            rotate=config.rotate,
            exposure=exposure,
            normalisation=self.normalisation,
            colour=ColourMix(recast=config.colour_recast, synthetic=config.colour_synthetic),
            mark_plain=self.teacher is not None,
        )
        self.sampler: DistributedSampler[tuple[torch.Tensor, torch.Tensor]] | None = (
            DistributedSampler(self.train_set, seed=config.seed, drop_last=True) if self.ctx.enabled else None
        )
        self.loader = DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            drop_last=True,
            num_workers=config.workers,
            persistent_workers=config.workers > 0,
        )
        if len(self.loader) == 0:
            raise TrainingError(f"{len(self.train_set)} training pairs are fewer than one batch of {config.batch_size}")
        self.val_pairs = list_pairs(data_root / "val")[: config.val_limit or None] if self.ctx.is_main else []

    # --- setup -------------------------------------------------------------------------------
    def _build_model(self, resume: dict[str, Any] | None) -> FRLIE:
        """A resumed run rebuilds what it saved; stage 2 starts from stage-1 encoder/decoder weights."""
        config = self.config
        if resume is not None:
            return FRLIE(FRLIEConfig.from_dict(resume["config"]))
        if config.init:  # warm start: every part from a trained model (e.g. the shipped weights)
            model, _ = load_weights(config.init)
            return model
        if self.stage != "stage2":
            return FRLIE(FRLIEConfig(width=config.width, fr_blocks=config.fr_blocks, upsample=config.upsample))
        if not config.stage1:
            raise TrainingError("stage2 needs --stage1 CHECKPOINT (the encoder/decoder trained by stage1) or --init")
        pretrained, _ = load_weights(config.stage1)
        model = FRLIE(FRLIEConfig(pretrained.config.width, config.fr_blocks, pretrained.config.upsample))
        model.encoder.load_state_dict(pretrained.encoder.state_dict())
        model.decoder.load_state_dict(pretrained.decoder.state_dict())
        return model

    def _load_teacher(self) -> FRLIE | None:
        """The frozen network that plain samples learn from (``--colour-distill``), or None."""
        config = self.config
        if config.colour_distill is None:
            return None
        if self.stage != "stage2" or not (config.colour_recast or config.colour_synthetic):
            raise TrainingError("--colour-distill needs stage2 and a colour mix (--colour-recast / --colour-synthetic)")
        teacher, _ = load_weights(config.colour_distill)
        if state_digest([teacher.encoder, teacher.decoder]) != state_digest([self.model.encoder, self.model.decoder]):
            # Its restored features are targets for this FRNet: they must mean the same to this decoder.
            raise TrainingError(f"{config.colour_distill} has another encoder/decoder than the network trained here")
        return teacher.to(self.device).eval().requires_grad_(False)

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload.get("stage") != self.stage:
            raise TrainingError(f"{self.out / LAST} is a {payload.get('stage')} checkpoint, not {self.stage}")
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

    def autocast(self) -> AbstractContextManager[Any]:
        precision = self.config.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        config = self.config
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        dist_utils.barrier(self.ctx)
        deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else math.inf
        scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16" and self.device.type == "cuda")
        progress = tqdm(
            total=config.steps,
            initial=self.step,
            desc=self.stage,
            disable=not self.ctx.is_main or config.quiet,
            dynamic_ncols=True,
        )
        running: dict[str, float] = {}
        self.started = time.monotonic()
        stop_reason = "steps"
        epoch = self.step // max(1, len(self.loader))
        self.set_train_mode()
        while self.step < config.steps:
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            for low, high, *plain in self.loader:
                terms = self._train_step(low, high, scaler, plain[0] if plain else None)
                self.step += 1
                for key, value in {"loss": terms.total.item(), **terms.parts}.items():
                    running[key] = running.get(key, 0.0) + value
                progress.update(1)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    count = config.log_every if self.step % config.log_every == 0 else self.step % config.log_every
                    means = {k: v / count for k, v in running.items()}
                    running.clear()
                    progress.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                    self._log_train(means)
                if config.val_every and self.step % config.val_every == 0:
                    self._validate_and_save()
                    self.set_train_mode()
                elif self.step % config.save_every == 0:
                    self._save_last()
                if config.keep_every and self.step % config.keep_every == 0:
                    self._keep_snapshot()
                out_of_time = dist_utils.any_rank(time.monotonic() >= deadline, self.ctx, self.device)
                if out_of_time or self.step >= config.steps:
                    stop_reason = "time budget" if out_of_time and self.step < config.steps else "steps"
                    break
            if stop_reason == "time budget":
                break
            epoch += 1
        progress.close()
        result = self._validate_and_save() if self.validated_at != self.step else None
        if self.ctx.is_main and not config.quiet:
            print(
                f"{self.stage}: stopped at step {self.step}/{config.steps} ({stop_reason}); best val PSNR "
                f"{self.best_psnr:.3f} dB; checkpoints in {self.out}"
            )
        dist_utils.barrier(self.ctx)
        dist_utils.shutdown(self.ctx)
        return {"step": self.step, "best_psnr": self.best_psnr, "stop_reason": stop_reason, **(result or {})}

    def _train_step(
        self, low: torch.Tensor, high: torch.Tensor, scaler: torch.amp.GradScaler, plain: torch.Tensor | None = None
    ) -> LossTerms:
        low, high = low.to(self.device, non_blocking=True), high.to(self.device, non_blocking=True)
        with self.autocast():
            output, target, restored, target_features = self.forward(low, high)
            if self.teacher is not None and plain is not None:
                target, target_features = self._distilled_targets(low, plain, target, target_features)
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

    @torch.no_grad()
    def _distilled_targets(
        self, low: torch.Tensor, plain: torch.Tensor, target: torch.Tensor, target_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's answer and restored features as the targets of the plain samples."""
        assert self.teacher is not None
        features = self.teacher.frnet(self.teacher.encoder(low))
        answer = self.teacher.decoder(features)
        mask = plain.to(self.device).view(-1, 1, 1, 1)
        return torch.where(mask, answer.to(target.dtype), target), torch.where(
            mask, features.to(target_features.dtype), target_features
        )

    # --- validation, logs and checkpoints ----------------------------------------------------
    def evaluated_model(self) -> FRLIE:
        """What validation scores and ``best.pt`` holds: the EMA weights when --ema is on, else the model."""
        if self.ema is None:
            return self.model
        averaged = copy.deepcopy(self.model)
        for part, ema_part in zip(trainable_parts(averaged, self.stage), self.ema.module.children(), strict=True):
            part.load_state_dict(ema_part.state_dict())
        return averaged

    def _validate_and_save(self) -> dict[str, float] | None:
        result = None
        self.validated_at = self.step
        if self.ctx.is_main:
            evaluated = self.evaluated_model()
            result = validate_model(
                evaluated,
                self.val_pairs,
                self.stage,
                self.device,
                exposures=self.config.val_exposures,
                normalisation=self.normalisation,
            )
            improved = result["score"] > self.best_psnr
            metrics = {"val_" + key: value for key, value in result.items()}
            if improved:
                self.best_psnr = result["score"]
                save_weights(evaluated, self.out / BEST, stage=self.stage, step=self.step, metrics=metrics)
            extra = {key: round(value, 4) for key, value in result.items() if key.startswith("psnr_")}
            append_row(
                self.out,
                VAL_LOG,
                {
                    "step": self.step,
                    "psnr": round(result["psnr"], 4),
                    "ssim": round(result["ssim"], 5),
                    "best": int(improved),
                    **extra,
                },
            )
            if not self.config.quiet:
                shown = "".join(f", {key[5:]} {value:.2f}" for key, value in extra.items())
                tqdm.write(
                    f"[{self.stage}] step {self.step}: val PSNR {result['psnr']:.3f} dB, "
                    f"SSIM {result['ssim']:.4f}{shown}{'  (best)' if improved else ''}"
                )
        self._save_last()
        return result

    def _keep_snapshot(self) -> None:
        """The evaluated weights at this step, kept for good: checkpoints averaged by a rule chosen
        before training (e.g. the middle and the end of the schedule) need no validation to pick them."""
        if self.ctx.is_main:
            save_weights(self.evaluated_model(), self.out / snapshot_name(self.step), stage=self.stage, step=self.step)

    def _save_last(self) -> None:
        if self.ctx.is_main:
            if state_digest(frozen_parts(self.model, self.stage)) != self.frozen_digest:
                raise RuntimeError("frozen encoder/decoder changed during stage 2: this is a bug")
            save_weights(
                self.model,
                self.out / LAST,
                stage=self.stage,
                step=self.step,
                best_psnr=self.best_psnr,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
                rng=_rng_state(),
                args=self.config.as_record(),
                elapsed_s=self.elapsed(),
                world_size=self.ctx.world_size,
            )
        dist_utils.barrier(self.ctx)

    def elapsed(self) -> float:
        """Wall seconds of training across all resumed runs of this job."""
        return self.elapsed_before + time.monotonic() - self.started

    def _log_train(self, means: dict[str, float]) -> None:
        if self.ctx.is_main:
            row = {"step": self.step, "elapsed_s": round(self.elapsed(), 1), "lr": self.scheduler.get_last_lr()[0]}
            append_row(self.out, TRAIN_LOG, {**row, **{k: round(v, 6) for k, v in means.items()}})


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for stage in STAGES:
        parser = subparsers.add_parser(stage, help=STAGE_HELP[stage], description=STAGE_HELP[stage])
        add_arguments(parser, stage)
        parser.set_defaults(func=run, stage=stage)


# Checkpoints written before TrainConfig stored this function (``func`` of the argparse namespace):
# it must keep its name and module for their ``args`` to unpickle.
def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but no CUDA device is available")
    Trainer(config).fit()
    return 0
