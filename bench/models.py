"""The ONNX files and PyTorch modules a benchmark runs, built once per run in a scratch folder.

Speed does not depend on weight values, so when the bundled model is absent a randomly
initialised network of the same architecture stands in, and PyTorch eager always runs a random
network of the architecture recorded in the ONNX file.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from model.contract import BUNDLED_MODEL_PATH
from model.network import FRLIE, FRLIEConfig

log = logging.getLogger(__name__)

BUNDLED = "bundled"  # the shipped model if there is one, else a random default-architecture export
DEFAULT = "default"  # random weights, default architecture (C=32, 4 FR blocks)
TINY = "tiny"  # random weights, C=8 and 1 FR block: ~30x cheaper, for smoke runs and scaling curves
ARCHITECTURES = {DEFAULT: FRLIEConfig(), TINY: FRLIEConfig(width=8, fr_blocks=1)}


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file and what it is."""

    path: Path
    config: FRLIEConfig
    label: str  # "default", "tiny" or the file name
    source: str  # where the weights came from, for the tables
    precision: str = "fp32"

    def describe(self) -> str:
        c = self.config
        return f"{self.label} (C={c.width}, {c.fr_blocks} FR blocks, {self.precision}; {self.source})"

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "label": self.label,
            "source": self.source,
            "precision": self.precision,
            "architecture": self.config.to_dict(),
        }


def architecture_of(path: Path) -> FRLIEConfig:
    """The architecture stored in an exported file's metadata (export writes it)."""
    from training.onnx_metadata import read_metadata

    metadata = read_metadata(path)
    if "architecture" not in metadata:
        raise ValueError(f"{path} has no architecture metadata; export it with `python -m training export`")
    return FRLIEConfig.from_dict(json.loads(metadata["architecture"]))


def torch_model(config: FRLIEConfig) -> FRLIE:
    """A randomly initialised network in eval mode (BatchNorm uses its running statistics)."""
    return FRLIE(config).eval()


class ModelStore:
    """Resolves model specs (bundled / default / tiny / a path) to files, exporting each at most once."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._cache: dict[str, ModelFile] = {}

    def resolve(self, spec: str) -> ModelFile:
        if spec not in self._cache:
            self._cache[spec] = self._resolve(spec)
        return self._cache[spec]

    def _resolve(self, spec: str) -> ModelFile:
        if spec == BUNDLED:
            if BUNDLED_MODEL_PATH.is_file():
                return self._from_file(BUNDLED_MODEL_PATH, DEFAULT, "bundled model/weights/frlie.onnx")
            log.info("no bundled model at %s: exporting random weights of the default architecture", BUNDLED_MODEL_PATH)
            return self.resolve(DEFAULT)
        if spec in ARCHITECTURES:
            return self._export(spec)
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"model {spec!r} is neither {BUNDLED}/{DEFAULT}/{TINY} nor an .onnx file")
        return self._from_file(path, path.stem, str(path))

    def _from_file(self, path: Path, label: str, source: str) -> ModelFile:
        return ModelFile(path, architecture_of(path), label, source)

    def _export(self, name: str) -> ModelFile:
        import torch

        from training.export import export_onnx

        config = ARCHITECTURES[name]
        path = self.scratch / f"{name}.onnx"
        torch.manual_seed(0)
        # The exporter's chatter (missing torchvision ops, pytree deprecations) is not about us.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            export_onnx(torch_model(config), path, metadata={"model_version": f"bench-random-{name}"}, verify=False)
        return ModelFile(path, config, name, "random weights")

    def fp16(self, model: ModelFile) -> ModelFile:
        """The same weights converted to fp16 (inputs and outputs stay fp32, as `export --fp16` does)."""
        key = f"{model.path}:fp16"
        if key not in self._cache:
            import onnx

            from training.fp16 import to_fp16

            proto = to_fp16(onnx.load(str(model.path)))
            path = self.scratch / f"{model.path.stem}-fp16.onnx"
            onnx.save_model(proto, str(path), save_as_external_data=False)
            self._cache[key] = replace(model, path=path, precision="fp16")
        return self._cache[key]
