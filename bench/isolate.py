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

MARKER = "BENCH-ISOLATED-RESULT "
TAIL_CHARS = 2000


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_rss_bytes() -> int:
    """Resident set size now, for a baseline before the measured work."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Start the high-water mark afresh (Linux >= 4.0), so set-up such as building a synthetic input
    does not count as the measured work's peak. False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process image's high-water RSS. Not getrusage's ru_maxrss: on Linux that survives exec
    and so starts at the RSS of the parent that forked us (the benchmark, torch and all)."""
    return _status_kib("VmHWM") * 1024


def run_isolated(target: str, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The function's result plus ``peak_rss_bytes``, or ``{"error": ...}`` if the process failed."""
    command = [sys.executable, "-m", "bench.isolate", target, json.dumps(kwargs)]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
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
