"""Benchmark 3, tiling: time and peak memory against image size, tiled versus whole-image.

"Tiled" is what the service does by default: on the CPU, cost-aware windows per image (the
fewest computed pixels within FRLIE_MEMORY_BUDGET_MB, whole when the image fits); on a GPU,
fixed 256 px tiles. The tile-size sweep compares that default with fixed tiles, 256 px (the
fixed-tile default before cost-aware planning, still the GPU default) included.

Every case runs in a fresh process (bench.isolate) so its peak RSS is its own. Sizes go up in
each series and the next case is predicted from the last one: a whole-image run that would not
fit in memory, or any run that would take longer than the cap, is skipped and the table says
why. On a CPU the 4-block model is measured at the sizes it can do in a few seconds, and a tiny
model (same code paths, ~30x less work) carries the memory curve up to 24 MP.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from bench import images
from bench.images import Size
from bench.isolate import run_isolated
from bench.machine import available_memory_bytes
from bench.models import BUNDLED, TINY, ModelStore
from bench.report import MISSING, markdown_table, num, section
from service.settings import DEFAULT_GPU_TILE_SIZE

log = logging.getLogger(__name__)

MODES = ("tiled", "whole")
CASE = "bench.tiling_case:enhance"
MB = 1e6
OLD_FIXED_TILE_SIZE = DEFAULT_GPU_TILE_SIZE  # the fixed-tile default before cost-aware tiling (still the GPU's)


@dataclass(frozen=True)
class Series:
    """One model across growing sizes, in each mode."""

    model: str
    sizes: tuple[Size, ...]
    modes: tuple[str, ...] = MODES


@dataclass(frozen=True)
class TilingBenchConfig:
    device: str = "cpu"
    series: tuple[Series, ...] = (
        Series(BUNDLED, ((1280, 720), (1920, 1080))),
        Series(TINY, ((1920, 1080), (3840, 2160), (6000, 4000))),
    )
    sweep_model: str = BUNDLED
    sweep_size: Size | None = (1920, 1080)
    # Fixed tile sizes compared with the service default at sweep_size; OLD_FIXED_TILE_SIZE is always
    # among them where the default is cost-aware (the CPU), as the "before" reference.
    tile_sizes: tuple[int, ...] = (512, 1024)
    repeats: int = 1
    max_case_s: float = 60.0  # predicted seconds for a case (all runs) above which it is skipped
    memory_fraction: float = 0.6  # of MemAvailable a whole-image run may be predicted to need
    case_timeout_s: float = 600.0
    # FRLIE_MEMORY_BUDGET_MB for the cost-aware default; None = the service's own default. The quick
    # preset lowers it so the tiny model's small images are still split into windows.
    memory_budget_mb: int | None = None

    @classmethod
    def preset(cls, device: str, quick: bool) -> TilingBenchConfig:
        if quick:
            return cls(
                device=device,
                series=(Series(TINY, ((240, 160), (480, 320), (1280, 960))),),
                sweep_model=TINY,
                sweep_size=(480, 320),
                tile_sizes=(128,),
                max_case_s=30.0,
                case_timeout_s=120.0,
                memory_budget_mb=64,
            )
        if device == "cuda":
            return cls(
                device=device,
                series=(Series(BUNDLED, ((1920, 1080), (3840, 2160), (6000, 4000))),),
                sweep_size=(3840, 2160),
                repeats=3,
                max_case_s=120.0,
            )
        return cls(device=device)


def _predict(previous: dict[str, Any] | None, size: Size, runs: int) -> tuple[float | None, float | None]:
    """(seconds for ``runs`` runs, extra bytes) at ``size``, scaled by pixels from the last case of the series."""
    if previous is None or "error" in previous:
        return None, None
    scale = size[0] * size[1] / previous["pixels"]
    extra = max(0, previous["peak_rss_bytes"] - previous["base_rss_bytes"])
    return previous["median_s"] * scale * runs, extra * scale


def _skip_reason(config: TilingBenchConfig, mode: str, seconds: float | None, extra_bytes: float | None) -> str | None:
    if seconds is not None and seconds > config.max_case_s:
        return f"predicted {seconds:.0f} s > cap {config.max_case_s:.0f} s"
    available = available_memory_bytes()
    if mode == "whole" and extra_bytes is not None and available and extra_bytes > config.memory_fraction * available:
        limit = f"{config.memory_fraction:.0%} of available {available / 1e9:.1f} GB"
        return f"predicted {extra_bytes / 1e9:.1f} GB > {limit}"
    return None


class _Runner:
    """Runs cases in fresh processes, once each (the tile sweep reuses the series' default-tile case)."""

    def __init__(self, config: TilingBenchConfig, store: ModelStore) -> None:
        self.config = config
        self.store = store
        self._done: dict[tuple[str, Size, str, int | None], dict[str, Any]] = {}

    def case(
        self, model: str, size: Size, mode: str, tile_size: int | None, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        key = (model, size, mode, tile_size)
        if key in self._done:
            return self._done[key]
        cost_aware = mode == "tiled" and tile_size is None and self.config.device == "cpu"
        runs = self.config.repeats + (1 if mode == "whole" or cost_aware else 0)  # + the untimed first run
        seconds, extra = _predict(previous, size, runs)
        row: dict[str, Any] = {
            "model": model,
            "size": images.label(size),
            "pixels": size[0] * size[1],
            "megapixels": images.megapixels(size),
            "requested_tile_size": tile_size,
        }
        reason = _skip_reason(self.config, mode, seconds, extra)
        if reason:
            row.update(mode=mode, skipped=reason)
        else:
            model_file = self.store.resolve(model)
            log.info("tiling %s %s %s (tile %s)", model_file.label, images.label(size), mode, tile_size or "default")
            kwargs = {
                "model_path": str(model_file.path),
                "device": self.config.device,
                "width": size[0],
                "height": size[1],
                "mode": mode,
                "tile_size": tile_size,
                "repeats": self.config.repeats,
                "memory_budget_mb": self.config.memory_budget_mb,
            }
            row.update(mode=mode, model_label=model_file.label)
            row.update(run_isolated(CASE, kwargs, self.config.case_timeout_s))
        self._done[key] = row
        return row


def _sweep_tile_sizes(config: TilingBenchConfig) -> list[int]:
    """Fixed tile sizes to compare with the default: the old fixed default first (on a GPU it is
    still the default, so it is left out there), then the configured ones, each once."""
    reference = [OLD_FIXED_TILE_SIZE] if config.device == "cpu" else []
    sizes = dict.fromkeys([*reference, *config.tile_sizes])
    if config.device != "cpu":
        sizes.pop(DEFAULT_GPU_TILE_SIZE, None)
    return list(sizes)


def _add_overheads(rows: list[dict[str, Any]]) -> None:
    """Tiled time / whole time - 1, where both ran for the same model and size."""
    whole = {(r["model"], r["size"]): r["median_s"] for r in rows if r["mode"] == "whole" and "median_s" in r}
    for row in rows:
        base = whole.get((row["model"], row["size"]))
        comparable = row["mode"] == "tiled" and base and "median_s" in row
        row["tiling_time_overhead"] = row["median_s"] / base - 1 if comparable else None


def run(config: TilingBenchConfig, store: ModelStore) -> dict[str, Any]:
    runner = _Runner(config, store)
    rows: list[dict[str, Any]] = []
    for series in config.series:
        for mode in series.modes:
            previous = None
            for size in series.sizes:
                row = runner.case(series.model, size, mode, None, previous)
                rows.append(row)
                previous = row if "median_s" in row else previous
    _add_overheads(rows)
    sweep = []
    if config.sweep_size:
        previous = None
        for tile_size in [None, *_sweep_tile_sizes(config)]:
            row = runner.case(config.sweep_model, config.sweep_size, "tiled", tile_size, previous)
            sweep.append(
                {
                    **row,
                    "tile_size": tile_size,
                    "service_default": tile_size is None,
                    "old_fixed_default": tile_size == OLD_FIXED_TILE_SIZE,
                }
            )
            previous = row if "median_s" in row else previous
        default = sweep[0].get("median_s")
        for row in sweep:
            row["speedup_vs_default"] = default / row["median_s"] if default and "median_s" in row else None
    return {
        "benchmark": "tiling",
        "config": asdict(config),
        "models": {
            spec: store.resolve(spec).describe() for spec in (*(s.model for s in config.series), config.sweep_model)
        },
        "results": rows,
        "tile_size_sweep": sweep,
    }


def _mb(row: dict[str, Any], key: str) -> str:
    return num(row[key] / MB) if key in row else MISSING


def _status(row: dict[str, Any]) -> str:
    if row["mode"] == "tiled" and row.get("tiles") == 1:
        return "fits one window: runs whole"
    return row.get("skipped") or row.get("error") or ""


def _plan(row: dict[str, Any]) -> str:
    """The plan as the service's X-Tile-Plan header writes it (older JSON: the window shape)."""
    if "plan" in row:
        return row["plan"]
    return f"{row['tiles']} x {'x'.join(map(str, row['window']))}" if "window" in row else MISSING


def _s_per_mp(row: dict[str, Any]) -> str:
    if "seconds_per_output_megapixel" in row:
        return num(row["seconds_per_output_megapixel"])
    return num(row["median_s"] / row["megapixels"]) if "median_s" in row else MISSING


def _tiling_label(row: dict[str, Any]) -> str:
    """Sweep row: 'cost-aware (default)', '256 fixed (old default)', '512 fixed'."""
    if row["service_default"]:
        kind = row.get("tiling")
        if kind == "fixed" and row.get("tile_core"):
            return f"{row['tile_core']} fixed (default)"
        return f"{kind or 'service'} (default)"
    label = f"{row['tile_size']} fixed"
    return f"{label} (old default)" if row.get("old_fixed_default") else label


def markdown(result: dict[str, Any], caption: str) -> str:
    rows = [
        [
            r.get("model_label", r["model"]),
            r["size"],
            num(r["megapixels"]),
            r["mode"],
            _plan(r),
            num(r.get("computed_pixel_ratio")),
            num(r.get("median_s")),
            _s_per_mp(r),
            _mb(r, "peak_rss_bytes"),
            num((r["peak_rss_bytes"] - r["base_rss_bytes"]) / MB) if "peak_rss_bytes" in r else MISSING,
            num(None if r["tiling_time_overhead"] is None else 100 * r["tiling_time_overhead"], 2),
            _status(r),
        ]
        for r in result["results"]
    ]
    table = markdown_table(
        [
            "model",
            "size",
            "MP",
            "mode",
            "plan (rows x cols windows of h x w)",
            "computed / image pixels",
            "s / image",
            "s / output MP",
            "peak RSS MB",
            "RSS above loaded model MB",
            "tiling time overhead %",
            "note",
        ],
        rows,
    )
    config = result["config"]
    budget = config.get("memory_budget_mb")
    budget_note = (
        f" Memory budget for this run: FRLIE_MEMORY_BUDGET_MB={budget} (lowered so small images are still split)."
        if budget
        else ""
    )
    notes = [
        *(f"`{spec}`: {description}" for spec, description in result["models"].items()),
        "Each case in a fresh process through the service's Pipeline (batcher, tile extraction, stitching), warmed up "
        f"as a running service is; s / image = median of {config['repeats']} run(s). Peak RSS = the process's maximum "
        "(model, input and output images included); 'above loaded model' subtracts the RSS after the session was "
        "created and the input image existed.",
        "Tiled = the service default: on the CPU cost-aware windows (the plan computing the fewest pixels within "
        "FRLIE_MEMORY_BUDGET_MB, whole when the image fits), on a GPU fixed 256 px tiles."
        + budget_note
        + " Whole = one ORT call on the whole (padded) image. Overhead = tiled / whole - 1 at the same size. "
        "computed / image pixels = model-input pixels (windows x window area) per output pixel. Cases whose predicted "
        "time or memory (scaled from the previous size) exceeds the caps "
        f"({config['max_case_s']:g} s, {config['memory_fraction']:.0%} of available memory) are skipped.",
    ]
    out = section("Tiling: time and memory against image size", caption, table, notes)
    sweep = result["tile_size_sweep"]
    if sweep:
        sweep_rows = [
            [
                _tiling_label(r),
                _plan(r),
                num(r.get("computed_pixel_ratio")),
                num(r.get("median_s")),
                _s_per_mp(r),
                num(r.get("speedup_vs_default")),
                _mb(r, "peak_rss_bytes"),
                _status(r),
            ]
            for r in sweep
        ]
        sweep_table = markdown_table(
            [
                "tiling",
                "plan (rows x cols windows of h x w)",
                "computed / image pixels",
                "s / image",
                "s / output MP",
                "x vs default",
                "peak RSS MB",
                "note",
            ],
            sweep_rows,
        )
        title = f"Tile size ({sweep[0].get('model_label', sweep[0]['model'])} model, {sweep[0]['size']})"
        out += "\n" + section(
            title,
            caption,
            sweep_table,
            [
                "computed / image pixels: model-input pixels (cores + halos) per output pixel, the work tiling adds. "
                f"{OLD_FIXED_TILE_SIZE} fixed (old default): the fixed tiles the service used on every device before "
                "cost-aware planning (still the GPU default). x vs default > 1: faster than the service default."
            ],
        )
    return out
