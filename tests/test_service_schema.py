"""The API schema says what the service accepts: schemathesis against the live /openapi.json."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import GRACEFUL_EXIT_CODES, ServerProcess, export_tiny_model

pytestmark = pytest.mark.timeout(600)
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is a dev dependency (pip install -e .[dev])")
def test_schemathesis_finds_nothing_with_all_checks(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = export_tiny_model(tmp_path_factory.getbasetemp())
    running = ServerProcess(model, tmp_path_factory.mktemp("logs") / "schema.log", max_pixels=4_000_000).start()
    try:
        result = subprocess.run(
            [
                SCHEMATHESIS,
                "--config-file",
                str(CONFIG),
                "run",
                f"http://127.0.0.1:{running.port}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        assert running.stop() in GRACEFUL_EXIT_CODES
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "Tested: 8" in result.stdout, report  # /enhance, /jobs (4 routes), /healthz, /readyz, /metrics
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts is not None and int(counts[1]) == int(counts[2]) > 50, report  # every case passed every check
