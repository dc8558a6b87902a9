"""Print the image's pip requirements: the serving dependencies of pyproject.toml, with ONNX Runtime
swapped for the CUDA build the image targets (and its pip-installed CUDA and cuDNN libraries).

    python docker/requirements.py --cuda 13 > requirements.txt

pyproject.toml stays the single list of serving dependencies; only the ONNX Runtime line depends on
the host's CUDA major version. Standard library only: it runs in the bare Python build stage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ORT_PACKAGE = "onnxruntime-gpu"
# CUDA major -> the onnxruntime-gpu release built for it, with the extras that pull the matching
# CUDA runtime and cuDNN wheels from PyPI (so the image needs no CUDA base image).
#   13: the release pinned in pyproject.toml; NVIDIA driver >= 580.
#   12: the last release built for CUDA 12 (cu12 wheels); NVIDIA driver >= 525.
ORT_FOR_CUDA = {"13": None, "12": "1.26.0"}
ORT_EXTRAS = "[cuda,cudnn]"
# Never in the image: training-only packages (the service runs ONNX Runtime, not PyTorch).
FORBIDDEN = ("torch",)


def _name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _pinned_version(requirement: str) -> str:
    match = re.search(r"==\s*([\w.+!-]+)", requirement)
    if match is None:
        raise ValueError(f"{requirement!r} is not pinned with ==")
    return match.group(1)


def serving_requirements(pyproject: Path, cuda: str) -> list[str]:
    """pyproject's [project].dependencies with onnxruntime-gpu pinned for ``cuda`` ("12" or "13")."""
    if cuda not in ORT_FOR_CUDA:
        raise ValueError(f"CUDA major {cuda!r} is not supported; choose one of {sorted(ORT_FOR_CUDA)}")
    dependencies: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    result: list[str] = []
    for requirement in dependencies:
        name = _name(requirement)
        if name in FORBIDDEN:
            raise ValueError(f"{requirement!r} must not be a serving dependency")
        if name == ORT_PACKAGE:
            version = ORT_FOR_CUDA[cuda] or _pinned_version(requirement)
            requirement = f"{ORT_PACKAGE}{ORT_EXTRAS}=={version}"
        result.append(requirement)
    if not any(_name(r) == ORT_PACKAGE for r in result):
        raise ValueError(f"{pyproject} does not depend on {ORT_PACKAGE}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuda", default="13", help="CUDA major version of the target hosts (12 or 13)")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args(argv)
    try:
        lines = serving_requirements(args.pyproject, args.cuda)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
