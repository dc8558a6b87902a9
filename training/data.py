"""Paired low/normal-light images in the LOL layout: ROOT/low/NAME and ROOT/high/NAME."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class PairedDataError(ValueError):
    """The folder is not a usable set of low/high pairs (missing, unpaired or unreadable files)."""


@dataclass(frozen=True)
class ImagePair:
    name: str
    low: Path
    high: Path


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
    image several times so that small datasets still give long, cheap epochs.
    """

    def __init__(self, root: str | Path, crop: int | None = 192, augment: bool = True, repeats: int = 1) -> None:
        self.pairs = list_pairs(root)
        self.crop = crop
        self.augment = augment
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        return low.float().div_(255.0), high.float().div_(255.0)
