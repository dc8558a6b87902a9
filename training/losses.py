"""Loss terms of the paper (eq. 1, 3-7) with the weights the paper omits (see model/MODEL_CARD.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

# Paper, section 2.2: lambda_D, lambda_FM, lambda_SSIM, lambda_Hue.
WEIGHT_PIXEL = 100.0
WEIGHT_FEATURE = 0.2
WEIGHT_SSIM = 0.5
WEIGHT_HUE = 0.05


def ssim_index(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of Wang et al. 2004 (Gaussian 11 x 11, sigma 1.5), images in [0, 1].

    'valid' padding so border pixels are not compared against zero padding: this is the
    standard definition and matches scikit-image's ``structural_similarity``.
    """
    return kornia.metrics.ssim(output, target, window_size=11, max_val=1.0, padding="valid").mean()


def hue_degrees(image: torch.Tensor) -> torch.Tensor:
    """Hue channel of HSV in degrees [0, 360)."""
    return kornia.color.rgb_to_hsv(image)[:, 0] * (180.0 / math.pi)


def hue_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Circular hue distance |H1 - H2| folded into [0, 180], averaged, divided by 180 (eq. 6)."""
    diff = (hue_degrees(output) - hue_degrees(target)).abs()
    return torch.minimum(diff, 360.0 - diff).mean() / 180.0


@dataclass
class LossTerms:
    """The weighted total and its parts (unweighted), for logging."""

    total: torch.Tensor
    parts: dict[str, float]


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor) -> LossTerms:
    """Stage 1 (eq. 1): 100 x MSE between D(E(I_h)) and I_h."""
    mse = F.mse_loss(output, target)
    return LossTerms(WEIGHT_PIXEL * mse, {"mse": mse.item()})


def restoration_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    restored_features: torch.Tensor | None = None,
    target_features: torch.Tensor | None = None,
) -> LossTerms:
    """Stage 2 (eq. 7). Without features (the "w/o FR" ablation) the feature matching term is dropped."""
    output, target = output.float(), target.float()
    mse = F.mse_loss(output, target)
    ssim = ssim_index(output, target)
    hue = hue_loss(output, target)
    total = WEIGHT_PIXEL * mse + WEIGHT_SSIM * (1.0 - ssim) + WEIGHT_HUE * hue
    parts = {"mse": mse.item(), "ssim": ssim.item(), "hue": hue.item()}
    if restored_features is not None and target_features is not None:
        feature = F.l1_loss(restored_features.float(), target_features.float())
        total = total + WEIGHT_FEATURE * feature
        parts["feature_l1"] = feature.item()
    return LossTerms(total, parts)
