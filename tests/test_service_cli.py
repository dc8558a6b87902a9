"""`python -m service enhance` for folders, and `serve` without a model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from service_helpers import dark_image, decode_image, encode_image, export_tiny_model, reference_enhance

from bench import REPO_ROOT

pytestmark = pytest.mark.timeout(120)


def _run(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRLIE_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=100
    )


def test_enhance_folders_and_files(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    model_path = export_tiny_model(tmp_path_factory.getbasetemp())
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    first = dark_image(60, 80, seed=1)
    (photos / "a.png").write_bytes(encode_image(first, "PNG"))
    (photos / "trip" / "b.jpg").write_bytes(encode_image(dark_image(50, 70, seed=2), "JPEG"))
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    single = tmp_path / "single.webp"
    single.write_bytes(encode_image(dark_image(30, 40, seed=3), "WEBP", lossless=True))
    out = tmp_path / "out"

    result = _run(
        "enhance",
        str(photos),
        str(single),
        "-o",
        str(out),
        "--strength",
        "1",  # the model output itself, to compare with
        FRLIE_MODEL_PATH=str(model_path),
        FRLIE_TILE_SIZE="16",
    )

    assert result.returncode == 1, result.stderr  # one file could not be read
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a.png",
        "single.png",
        "trip/b.jpg",
    ]
    np.testing.assert_array_equal(
        np.asarray(decode_image((out / "a.png").read_bytes())), reference_enhance(model_path, first)
    )
    assert decode_image((out / "trip" / "b.jpg").read_bytes()).size == (70, 50)
    # Within-photo progress: the windows bar counts every 16 px tile of every pass, and ends full.
    windows = re.findall(r"windows: +(\d+)%\|[^|]*\| (\d+)/(\d+) ", result.stderr)
    assert windows and windows[-1][0] == "100" and windows[-1][1] == windows[-1][2], result.stderr[-2000:]
    assert int(windows[-1][2]) > 3 * 4


def test_commands_without_a_model_say_how_to_get_one(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.onnx"
    for args in (("serve",), ("enhance", str(tmp_path), "-o", str(tmp_path / "out"))):
        result = _run(*args, FRLIE_MODEL_PATH=str(missing))
        assert result.returncode == 2
        assert "make train" in result.stderr and "make export" in result.stderr and "FRLIE_MODEL_PATH" in result.stderr


def test_the_service_does_not_import_torch() -> None:
    check = "import sys, service.app, service.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, timeout=60).returncode == 0
