"""FRLIE network definition (depends on torch only)."""

from model.checkpoint import load_weights, read_checkpoint, save_weights
from model.network import (
    FRLIE,
    MIN_SIDE,
    SIZE_MULTIPLE,
    FRLIEConfig,
    count_parameters,
    enhance,
    pad_to_multiple,
)

__all__ = [
    "FRLIE",
    "FRLIEConfig",
    "MIN_SIDE",
    "SIZE_MULTIPLE",
    "count_parameters",
    "enhance",
    "load_weights",
    "pad_to_multiple",
    "read_checkpoint",
    "save_weights",
]
