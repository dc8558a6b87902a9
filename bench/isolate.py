"""Run one measurement in a fresh Python process, so the peak RSS it reports is that case's alone.

A process's peak RSS only grows, and ORT keeps its memory arena for the session's lifetime, so
memory figures taken one after another in the same process would each include the previous
case. ``python -m bench.isolate MODULE:FUNCTION JSON`` calls the function with the JSON keyword
arguments and prints its JSON result with the process's peak RSS added.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

from bench import REPO_ROOT
from service.memory import peak_rss_bytes

MARKER = "BENCH-ISOLATED-RESULT "
TAIL_CHARS = 2000


def run_isolated(target: str, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The function's result plus ``peak_rss_bytes``, or ``{"error": ...}`` if the process failed."""
    command = [sys.executable, "-m", "bench.isolate", target, json.dumps(kwargs)]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    code = done.returncode
    reason = f"killed by signal {-code} (out of memory?)" if code < 0 else f"exit code {code}"
    return {"error": reason, "stderr_tail": done.stderr[-TAIL_CHARS:]}


def _main(target: str, arguments: str) -> int:
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**json.loads(arguments))
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
