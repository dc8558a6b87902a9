#!/usr/bin/env bash
# Fetch, into .whl/, the wheels that `make gpu-check` needs on a lent GPU machine and its image lacks
# (../.library/device/KINDS.md lists what it holds: torch, numpy, onnx, onnxruntime (CPU), pillow,
# scipy, scikit-image, tqdm...). Python 3.12, manylinux x86-64, the versions pinned in this venv.
# The device `run` then carries .whl (ignored by git) and `make gpu-check` installs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NEEDED=(kornia kornia_rs pydantic pydantic_core pydantic-settings python-dotenv typing-inspection annotated-types
        starlette fastapi pillow_heif)
rm -rf .whl && mkdir -p .whl
for name in "${NEEDED[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
du -sh .whl
