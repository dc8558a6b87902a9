"""Saving and loading network weights in one self-describing file (config + state dict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.network import FRLIE, FRLIEConfig


def save_weights(model: FRLIE, path: str | Path, **extra: Any) -> None:
    """Write config, state dict and any extra metadata (step, metrics...) to ``path``."""
    payload = {"config": model.config.to_dict(), "model": model.state_dict(), **extra}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The whole payload of a checkpoint (weights, and training state or metadata) without a model.

    Our own files carry plain Python objects (args, metrics), hence ``weights_only=False``: load only
    checkpoints you trust.
    """
    return torch.load(path, map_location=map_location, weights_only=False)


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[FRLIE, dict]:
    """Rebuild the network from a checkpoint file; returns (model in eval mode, full payload)."""
    payload = read_checkpoint(path, map_location)
    if "config" not in payload or "model" not in payload:
        raise ValueError(f"{path} is not an FRLIE checkpoint (missing 'config' or 'model')")
    model = FRLIE(FRLIEConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    model.eval()
    return model, payload
