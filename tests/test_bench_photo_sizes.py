"""bench.photo_sizes in its quick configuration (tiny model, small sizes, burst 12, flood 24): a real
server at default settings answers every size, reports its tile plan, and drops nothing accepted.

No timing assertions: the figures depend on the machine; only their structure and sanity are checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import images
from bench.photo_sizes import PhotoSizesConfig, main


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_photo_sizes_run_reports_sizes_memory_and_concurrency(tmp_path: Path) -> None:
    out = tmp_path / "photo-sizes.json"
    document = main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text())["sizes"] == json.loads(json.dumps(document["sizes"]))
    config = PhotoSizesConfig.preset(quick=True)

    # (a) every size, one at a time: 200, a plan from the service, per-megapixel figures against the reference
    sizes = document["sizes"]
    assert [row["size"] for row in sizes] == [images.label(size) for size in config.all_sizes]
    for row in sizes:
        assert row["status"] == 200 and row["output_size_ok"], row
        assert positive(row["wall_s"]) and positive(row["seconds_per_output_megapixel"]), row
        assert positive(row["ratio_to_reference"]) and positive(row["inference_s"]), row
        assert row["tile_count"] >= 1 and row["tile_plan"], row
        # X-Tile-Count counts the model inputs of every self-ensemble pass.
        assert row["ensemble_passes"] >= 1 and row["tile_count"] % row["ensemble_passes"] == 0, row
        assert row["tile_plan"].startswith("whole ") == (row["tile_count"] == row["ensemble_passes"]), row
        assert positive(row["server_peak_rss_bytes"]), row
    assert sizes[0]["ratio_to_reference"] == 1.0
    assert document["readyz"]["tiling"] == "cost-aware"  # the CPU default: only the model path was set
    assert set(document["server_env"]) == {"FRLIE_MODEL_PATH"}

    # (b) the server's memory over the whole run
    memory = document["memory"]
    assert positive(memory["peak_rss_bytes"]) and memory["rss_samples"] > 0
    assert positive(memory["idle_rss_bytes"]) and memory["idle_rss_bytes"] <= memory["peak_rss_bytes"]
    # The kernel's high-water mark misses no peak the poll saw (up to its per-thread counter slack, ~100s of kB).
    assert memory["vm_hwm_bytes"] >= 0.98 * memory["peak_rss_bytes"]
    assert max(row["server_peak_rss_bytes"] for row in sizes) <= memory["peak_rss_bytes"]

    # (c) a burst the default queue admits: all 200
    burst = document["burst"]
    assert burst["clients"] == config.burst and burst["statuses"] == {"200": config.burst}
    assert positive(burst["wall_s"]) and burst["ok_wrong_size"] == 0

    # (d) a flood: only 200 or 503 + Retry-After, every 200 the right image, the server's count matches
    flood = document["flood"]
    assert flood["clients"] == config.flood and sum(flood["statuses"].values()) == config.flood
    assert set(flood["statuses"]) <= {"200", "503"} and flood["ok"] >= 1
    assert flood["ok_wrong_size"] == 0 and flood["refused_without_retry_after"] == 0
    assert flood["retry_after_s"]["count"] == flood["statuses"].get("503", 0)
    assert flood["retry_after_s"]["min"] is None or flood["retry_after_s"]["min"] >= 0
    for row in (burst, flood):
        assert row["server_ok_count"] == row["ok"] and row["nothing_accepted_dropped"], row
        assert row["server_503_count"] == row["statuses"].get("503", 0), row

    assert document["server_exit_code"] in (0, -15)  # graceful shutdown (uvicorn re-raises SIGTERM)
    assert "### Photo sizes at default settings" in document["markdown"]
    assert "### Concurrent uploads at default settings" in document["markdown"]
