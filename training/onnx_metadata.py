"""Reading and updating the metadata properties of an ONNX file (model.contract names the keys).

A leaf module: export, quantization, the int8 gate and calibration all write records into model
files, and each reads them back, without importing one another.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata properties of an exported file (model version, metrics, receptive radius...)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def update_metadata(path: str | Path, properties: dict[str, str]) -> None:
    """Set ``properties`` in the file at ``path`` (others are kept), rewriting it as one file."""
    proto = onnx.load(str(path))
    merged = {p.key: p.value for p in proto.metadata_props} | properties
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, merged)
    onnx.save_model(proto, str(path), save_as_external_data=False)
