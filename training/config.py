"""The configuration of one training run: ``TrainConfig``, the flags that set it, and presets.

A run's settings come from three layers, later ones winning: the defaults below, a preset (a TOML
file of the recipe's hyper-parameters, ``--preset NAME``: ``training/presets/NAME.toml``, or a path
to such a file) and the flags given on the command line. A preset is read as the flags it stands
for, so it is checked by the same parser: ``exposure-2.0.toml`` holding ``batch_size = 6`` is
``--batch-size 6``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args

from training.errors import TrainingError

Stage = Literal["stage1", "stage2", "e2e"]
Device = Literal["cpu", "cuda"]
Schedule = Literal["step", "cosine", "constant"]
Precision = Literal["fp32", "bf16", "fp16"]
Upsample = Literal["pixelshuffle", "bilinear"]
STAGES: tuple[Stage, ...] = get_args(Stage)

PRESETS_DIR = "presets"  # inside the training package
PRESET_SUFFIX = ".toml"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run of ``python -m training stage1|stage2|e2e`` (the flags, by field name).

    These defaults are the flags' defaults (the parser keeps none of its own); the fields after
    ``init`` have flags for stage 2 only.
    """

    stage: Stage
    data: Path
    out: Path
    device: Device = "cpu"
    steps: int = 20000
    max_minutes: float = 0
    resume: bool = False
    seed: int = 0
    batch_size: int = 16
    crop: int = 192
    lr: float = 2e-4
    lr_final: float = 2e-5
    lr_schedule: Schedule = "step"
    decay_at: float = 0.5
    precision: Precision = "fp32"
    width: int = 32
    fr_blocks: int = 4
    upsample: Upsample = "pixelshuffle"
    val_every: int = 500
    val_limit: int = 0
    save_every: int = 100
    log_every: int = 10
    workers: int = 0
    threads: int = 0
    quiet: bool = False
    adam_betas: tuple[float, float] = (0.5, 0.9)
    ema: float = 0.0
    rotate: bool = False
    init: Path | None = None
    # stage 2 only
    stage1: Path | None = None
    exposure_identity: float = 0.0
    exposure_gain: float = 0.0
    exposure_max_gain: float = 10.0
    exposure_gamma: float = 0.0
    exposure_reference: float = 0.0
    exposure_power: float = 1.0
    exposure_noise_reference: float = 0.0
    val_exposures: bool = False
    colour_recast: float = 0.0
    colour_synthetic: float = 0.0
    keep_every: int = 0
    colour_distill: Path | None = None

    def __post_init__(self) -> None:
        if self.precision == "fp16" and self.device != "cuda":
            raise TrainingError("--precision fp16 needs --device cuda (use bf16 on CPU)")

    def as_record(self) -> dict[str, Any]:
        """Plain values for checkpoints and ``training-config.json``: the keys, in the order, of the
        argparse namespace that runs stored before this class (``command`` first, ``stage`` last)."""
        record: dict[str, Any] = {"command": self.stage}
        for field in dataclasses.fields(self):
            if field.name == "stage" or (self.stage != "stage2" and field.name in STAGE2_ONLY):
                continue
            value = getattr(self, field.name)
            record[field.name] = str(value) if isinstance(value, Path) else value
        record["adam_betas"] = list(self.adam_betas)
        record["stage"] = self.stage
        return record


STAGE2_ONLY = frozenset(
    (
        "stage1",
        "exposure_identity",
        "exposure_gain",
        "exposure_max_gain",
        "exposure_gamma",
        "exposure_reference",
        "exposure_power",
        "exposure_noise_reference",
        "val_exposures",
        "colour_recast",
        "colour_synthetic",
        "colour_distill",
    )
)
FIELDS = frozenset(field.name for field in dataclasses.fields(TrainConfig))


def add_arguments(parser: argparse.ArgumentParser, stage: str, *, run_flags: bool = True) -> None:
    """The flags of ``stage``, one per ``TrainConfig`` field. Flags that are not given stay out of the
    namespace (``config_from_args`` fills in the preset, then the defaults). ``run_flags=False``
    leaves out ``--data``, ``--out`` and ``--preset``: the flags a preset can stand for."""
    parser.argument_default = argparse.SUPPRESS
    if run_flags:
        parser.add_argument("--data", required=True, type=Path, help="data root with train/ and val/ (LOL layout)")
        parser.add_argument("--out", required=True, type=Path, help="run folder: checkpoints and CSV logs")
        parser.add_argument(
            "--preset",
            default=None,
            metavar="NAME|FILE.toml",
            help=f"recipe defaults from training/presets ({', '.join(preset_names())}) or a TOML file; "
            "flags given here override them",
        )
    parser.add_argument("--device", choices=get_args(Device))
    parser.add_argument("--steps", type=int, help="optimizer steps in total (default 20000)")
    parser.add_argument("--max-minutes", type=float, help="stop cleanly and save after this long")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int, help="per process (paper: 16)")
    parser.add_argument("--crop", type=int, help="random square crop size (paper: 192)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-final", type=float)
    parser.add_argument(
        "--lr-schedule",
        choices=get_args(Schedule),
        help="'step' (paper): drop to --lr-final at --decay-at; 'cosine': anneal to it",
    )
    parser.add_argument("--decay-at", type=float, help="fraction of --steps where 'step' decays")
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        help="autocast: bf16 on CPU or CUDA, fp16 (with grad scaling) on CUDA",
    )
    parser.add_argument("--width", type=int, help="base width C (features have 4C channels)")
    parser.add_argument("--fr-blocks", type=int)
    parser.add_argument("--upsample", choices=get_args(Upsample))
    parser.add_argument("--val-every", type=int, help="validate (and save best) every N steps; 0: only at the end")
    parser.add_argument("--val-limit", type=int, help="validate on the first N val pairs only (0: all)")
    parser.add_argument("--save-every", type=int, help="write last.pt every N steps")
    parser.add_argument(
        "--keep-every",
        type=int,
        help="also keep the weights of every N-th step (step-N.pt), to average by a rule fixed before training",
    )
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    parser.add_argument("--adam-betas", type=float, nargs=2, metavar=("B1", "B2"), help="Adam betas (paper: 0.5 0.9)")
    parser.add_argument(
        "--ema",
        type=float,
        help="EMA decay of the trained weights (e.g. 0.999); the EMA is validated and saved as best",
    )
    parser.add_argument("--rotate", action="store_true", help="add 90-degree rotations to the flips (8-way)")
    parser.add_argument(
        "--init", type=Path, help="warm start every part from this checkpoint (e.g. model/weights/frlie.pt)"
    )
    if stage == "stage2":
        parser.add_argument("--stage1", type=Path, help="stage-1 checkpoint providing the frozen encoder/decoder")
        group = parser.add_argument_group("exposure robustness (beyond the paper)")
        group.add_argument(
            "--exposure-identity", type=float, help="share of samples whose input is the normal-light image itself"
        )
        group.add_argument(
            "--exposure-gain", type=float, help="share of samples whose low image is brightened by a log-uniform gain"
        )
        group.add_argument("--exposure-max-gain", type=float, help="largest gain (default 10)")
        group.add_argument(
            "--exposure-gamma", type=float, help="probability of an extra random gamma in [0.6, 1] on a gain sample"
        )
        group.add_argument(
            "--exposure-reference",
            type=float,
            help="normalise inputs as the service does (FRLIE_EXPOSURE_REFERENCE): darken images brighter than "
            "this mean luma by (reference / exposure) ** --exposure-power, in training and validation (0: off)",
        )
        group.add_argument("--exposure-power", type=float, help="power of that normalisation (default 1)")
        group.add_argument(
            "--exposure-noise-reference",
            type=float,
            help="normalise inputs as the service does (FRLIE_EXPOSURE_NOISE_REFERENCE): divide out the digital "
            "gain read from the noise before --exposure-reference applies (0: off)",
        )
        colour = parser.add_argument_group("colour (beyond the paper; training.colour_mix)")
        colour.add_argument(
            "--colour-recast",
            type=float,
            help="share of samples whose low gets a random cast near neutral instead of its own (mean luma kept)",
        )
        colour.add_argument(
            "--colour-synthetic",
            type=float,
            help="share of samples whose input is the normal-light image captured dark by training.camera",
        )
        colour.add_argument(
            "--colour-distill",
            type=Path,
            metavar="CHECKPOINT",
            help="samples the colour mix leaves as they are learn this network's answer and restored features "
            "instead of the normal-light image (it keeps what the network knew of lol-pairs while the colour "
            "samples teach it other colours); colour samples keep the normal-light target",
        )
        group.add_argument(
            "--val-exposures",
            action="store_true",
            help="validate on the exposure variants too and select the best on their mean PSNR",
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the defaults, overridden by ``--preset``, overridden by the flags given."""
    given = {key: value for key, value in vars(args).items() if key in FIELDS}
    values = {**(read_preset(args.preset, args.stage) if args.preset else {}), **given}
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    return TrainConfig(**values)


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    """The presets bundled with the package (``training/presets/*.toml``), by name."""
    folder = resources.files("training") / PRESETS_DIR
    return sorted(
        item.name.removesuffix(PRESET_SUFFIX) for item in folder.iterdir() if item.name.endswith(PRESET_SUFFIX)
    )


def _preset_text(preset: str) -> str:
    if preset.endswith(PRESET_SUFFIX):
        path = Path(preset)
        if not path.is_file():
            raise TrainingError(f"preset file {path} not found")
        return path.read_text()
    if preset not in preset_names():
        raise TrainingError(f"no preset {preset!r}; bundled presets: {', '.join(preset_names())}")
    return (resources.files("training") / PRESETS_DIR / f"{preset}{PRESET_SUFFIX}").read_text()


def preset_flags(values: dict[str, Any]) -> list[str]:
    """The command-line flags a preset's values stand for (``rotate = true`` is ``--rotate``)."""
    flags: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []  # switches are off by default
        elif isinstance(value, list):
            flags += [flag, *(str(item) for item in value)]
        else:
            flags += [flag, str(value)]
    return flags


class _PresetParser(argparse.ArgumentParser):
    """Reports a bad value in a preset as a ``TrainingError`` instead of a usage message."""

    def error(self, message: str) -> NoReturn:
        raise TrainingError(f"{self.prog}: {message}")


def read_preset(preset: str, stage: str) -> dict[str, Any]:
    """The ``TrainConfig`` values a preset sets for ``stage``, parsed and checked like flags.

    A preset may name its ``stage``; it then serves that command only.
    """
    try:
        values = tomllib.loads(_preset_text(preset))
    except tomllib.TOMLDecodeError as exc:
        raise TrainingError(f"preset {preset}: {exc}") from exc
    meant_for = values.pop("stage", stage)
    if meant_for != stage:
        raise TrainingError(f"preset {preset} is a {meant_for} recipe, not {stage}")
    settable = FIELDS - {"stage", "data", "out"} - (set() if stage == "stage2" else STAGE2_ONLY)
    unknown = sorted(set(values) - settable)
    if unknown:
        raise TrainingError(f"preset {preset}: {', '.join(unknown)} cannot be set by a {stage} preset")
    parser = _PresetParser(prog=f"preset {preset}", add_help=False)
    add_arguments(parser, stage, run_flags=False)
    return vars(parser.parse_args(preset_flags(values)))
