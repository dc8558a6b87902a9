"""Paired low/normal-light images in the LOL layout: ROOT/low/NAME and ROOT/high/NAME."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from training.colour_mix import ColourMix
from training.normalisation import ExposureNormalisation

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class PairedDataError(ValueError):
    """The folder is not a usable set of low/high pairs (missing, unpaired or unreadable files)."""


@dataclass(frozen=True)
class ImagePair:
    name: str
    low: Path
    high: Path


@dataclass(frozen=True)
class ExposureMix:
    """Per-sample exposure augmentation for stage 2 (beyond the paper; see the model card).

    Each crop is, by chance: an *identity* sample (the normal-light image is both input and target),
    a *gain* sample (the low image times a log-uniform gain in [1, max_gain], clipped to [0, 1],
    then with probability ``gamma`` a random gamma in [``min_gamma``, 1]), or the plain low image.
    The target is always the normal-light image: the network learns that the output exposure does
    not depend on how dark the input is.
    """

    identity: float = 0.0
    gain: float = 0.0
    max_gain: float = 10.0
    gamma: float = 0.0
    min_gamma: float = 0.6

    def __post_init__(self) -> None:
        if min(self.identity, self.gain, self.gamma) < 0 or self.identity + self.gain > 1:
            raise ValueError("exposure shares must be >= 0 and identity + gain <= 1")
        if self.max_gain < 1 or not 0 < self.min_gamma <= 1:
            raise ValueError("max_gain must be >= 1 and min_gamma in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.identity > 0 or self.gain > 0

    def apply(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The network input for one float sample in [0, 1] (``low`` is not modified)."""
        return self.draw()(low, high)

    def draw(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One random choice, as a function of (low, high): the same choice can then be applied to a
        crop and to the whole image it came from (whose exposure the normalisation needs)."""
        draw = float(torch.rand(()))
        if draw < self.identity:
            return lambda low, high: high.clone()
        if draw >= self.identity + self.gain:
            return lambda low, high: low
        gain = math.exp(float(torch.rand(())) * math.log(self.max_gain))
        exponent = 1.0
        if float(torch.rand(())) < self.gamma:
            exponent = self.min_gamma + (1.0 - self.min_gamma) * float(torch.rand(()))
        return lambda low, high: (low * gain).clamp_(0.0, 1.0).pow_(exponent)


# Fixed evaluation variants for exposure robustness: name -> (low, high) -> network input.
# "low" is the benchmark task; "low x2"/"low x4" are moderately dark photos (the low image
# brightened, clipped like a camera would); "high" is a well-exposed photo sent by mistake,
# scored against itself.
ExposureVariant = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _brightened(gain: float) -> ExposureVariant:
    def variant(low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(low.astype(np.float32) * gain), 0, 255).astype(np.uint8)

    return variant


EXPOSURE_VARIANTS: dict[str, ExposureVariant] = {
    "low": lambda low, high: low,
    "low x2": _brightened(2.0),
    "low x4": _brightened(4.0),
    "high": lambda low, high: high,
}


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def list_pairs(root: str | Path) -> list[ImagePair]:
    """All pairs under ``root`` sorted by name; raises PairedDataError if any image lacks its partner."""
    root = Path(root)
    low_dir, high_dir = root / "low", root / "high"
    for folder in (low_dir, high_dir):
        if not folder.is_dir():
            raise PairedDataError(f"{folder} does not exist: expected {root}/low and {root}/high")
    low, high = _images_in(low_dir), _images_in(high_dir)
    unpaired = sorted(set(low) ^ set(high))
    if unpaired:
        shown = ", ".join(unpaired[:5]) + (" ..." if len(unpaired) > 5 else "")
        raise PairedDataError(f"{len(unpaired)} unpaired image(s) in {root}: {shown}")
    if not low:
        raise PairedDataError(f"no images in {low_dir}")
    return [ImagePair(name, low[name], high[name]) for name in sorted(low)]


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB; raises PairedDataError if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise PairedDataError(f"cannot read image {path}: {exc}") from exc


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """3 x H x W float in [0, 1] -> H x W x 3 uint8 (rounded)."""
    return image.clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()


class PairedImages(Dataset):
    """All pairs decoded once into memory; each item is a random aligned crop with random flips.

    ``crop=None`` returns whole images (for validation). ``repeats`` lets one epoch visit every
    image several times so that small datasets still give long, cheap epochs. ``rotate`` adds the
    90-degree rotations to the flips (the 8 symmetries of a square crop); ``exposure`` replaces the
    input of some samples (see ``ExposureMix``), and ``colour`` its colour (``training.colour_mix``).
    ``mark_plain`` adds a third item, True where the sample's low is the pair's own (for distillation).
    """

    def __init__(
        self,
        root: str | Path,
        crop: int | None = 192,
        augment: bool = True,
        repeats: int = 1,
        rotate: bool = False,
        exposure: ExposureMix | None = None,
        normalisation: ExposureNormalisation | None = None,
        colour: ColourMix | None = None,
        mark_plain: bool = False,
    ) -> None:
        self.pairs = list_pairs(root)
        self.mark_plain = mark_plain
        self.crop = crop
        self.augment = augment
        self.rotate = rotate and crop is not None
        self.exposure = exposure if exposure is not None and exposure.enabled else None
        self.normalisation = normalisation if normalisation is not None and normalisation.active else None
        self.colour = colour if colour is not None and colour.enabled else None
        if self.colour is not None and self.normalisation is not None:
            # The normalisation reads the whole photo, which a crop's colour mix does not change.
            raise ValueError("the colour mix and the exposure normalisation cannot be combined")
        self.repeats = max(1, repeats)
        self.low: list[torch.Tensor] = []
        self.high: list[torch.Tensor] = []
        for pair in self.pairs:
            low, high = load_rgb(pair.low), load_rgb(pair.high)
            if low.shape != high.shape:
                raise PairedDataError(f"{pair.name}: low {low.shape} and high {high.shape} differ in size")
            if crop is not None and min(low.shape[:2]) < crop:
                raise PairedDataError(f"{pair.name}: {low.shape[:2]} is smaller than the crop {crop}")
            # uint8 in memory (4x smaller than float); crops are converted on access.
            self.low.append(torch.from_numpy(low).permute(2, 0, 1).contiguous())
            self.high.append(torch.from_numpy(high).permute(2, 0, 1).contiguous())

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def _normalisation_gain(
        self, i: int, augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    ) -> float:
        """The service's gain for the whole input image of pair ``i`` (with the crop's exposure
        augmentation): a crop's mean or noise is not the photo's."""
        assert self.normalisation is not None
        whole = self.low[i]
        if augment is not None:
            whole = augment(self.low[i].float().div_(255.0), self.high[i].float().div_(255.0))
        return self.normalisation.read(whole.permute(1, 2, 0).numpy()).gain

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        i = index % len(self.pairs)
        low, high = self.low[i], self.high[i]
        if self.crop is not None:
            height, width = low.shape[-2:]
            top = int(torch.randint(0, height - self.crop + 1, ()))
            left = int(torch.randint(0, width - self.crop + 1, ()))
            low = low[:, top : top + self.crop, left : left + self.crop]
            high = high[:, top : top + self.crop, left : left + self.crop]
        if self.augment:
            if torch.rand(()) < 0.5:
                low, high = low.flip(-1), high.flip(-1)
            if torch.rand(()) < 0.5:
                low, high = low.flip(-2), high.flip(-2)
            if self.rotate and torch.rand(()) < 0.5:
                low, high = low.transpose(-1, -2), high.transpose(-1, -2)
        low_f, high_f = low.float().div_(255.0), high.float().div_(255.0)
        augment = self.exposure.draw() if self.exposure is not None else None
        if augment is not None:
            low_f = augment(low_f, high_f)
        recolour = self.colour.draw() if self.colour is not None else None
        if recolour is not None:
            low_f = recolour(low_f, high_f)
        if self.normalisation is not None:
            low_f = low_f * self._normalisation_gain(i, augment)
        if self.mark_plain:  # a third item: whether the low is lol-pairs' own, neither re-exposed nor recoloured
            return low_f.contiguous(), high_f.contiguous(), torch.tensor(augment is None and recolour is None)
        return low_f.contiguous(), high_f.contiguous()
