"""Output shared by every benchmark: markdown tables for humans, JSON files for machines."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.machine import caption

MISSING = "–"


def num(value: float | int | None, digits: int = 3) -> str:
    """About ``digits`` significant figures without scientific notation (tables are read by people)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, int):
        return str(value)
    magnitude = math.floor(math.log10(abs(value))) if value else 0
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are used as given (format numbers with ``num`` first)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, caption: str, table: str, notes: Sequence[str] = ()) -> str:
    """A titled table with the machine/model caption above it and notes below, ready for bench/RESULTS.md."""
    parts = [f"### {title}", "", caption, "", table]
    if notes:
        parts += ["", *(f"- {note}" for note in notes)]
    return "\n".join(parts) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def publish(
    document: dict[str, Any],
    render: Callable[[dict[str, Any], str], str],
    machine: Any,
    json_path: Path | None,
    *,
    summary: str | None = None,
) -> None:
    """Render ``document`` under the machine's caption into ``document["markdown"]``, print it (and
    ``summary``), and write the JSON when asked: the ending every standalone benchmark shares."""
    document["markdown"] = render(document, caption(machine))
    print(document["markdown"], flush=True)
    if summary is not None:
        print(summary, flush=True)
    if json_path:
        write_json(json_path, document)
        logging.getLogger(__name__).info("wrote %s", json_path)
