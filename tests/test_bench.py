"""Smoke tests of bench/: every benchmark runs in its quick configuration (tiny model, small sizes,
few requests) and its JSON has the promised structure with finite, positive numbers.

No timing assertions: these check that the scripts work and report sensibly, not how fast
this machine is.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import gpu_check, images
from bench.cli import EXIT_NO_DEVICE, main
from bench.load import LoadSpec, generate
from bench.machine import Machine, cpu_peak, gpu_peak, gpus
from bench.report import num
from bench.server import MetricsSnapshot
from bench.service_bench import SAMPLES_READ
from bench.timing import measure
from service.metrics import Metrics


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def load(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}-cpu-quick.json").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `python -m bench all --quick` run; the tests below read what it wrote."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["all", "--quick", "--out", str(out)]) == 0
    return out


# --- the three benchmarks, end to end -----------------------------------------------------------


@pytest.mark.slow
def test_all_writes_json_per_benchmark_and_the_markdown_tables(quick: Path) -> None:
    for name in ("model", "service", "tiling"):
        document = load(quick, name)
        assert document["benchmark"] == name
        assert positive(document["elapsed_s"])
        assert document["machine"]["cpu_model"]
        assert document["markdown"].startswith("### ")
    results = (quick / "RESULTS-cpu-quick.md").read_text()
    for heading in (
        "Model: PyTorch eager vs ONNX Runtime",
        "Service under load",
        "Service overhead per request",
        "Tiling: time and memory",
        "Tile size",
    ):
        assert f"### {heading}" in results
    assert "|---|" in results
    assert main(["render", "--quick", "--out", str(quick)]) == 0  # same tables again from the stored JSON
    assert (quick / "RESULTS-cpu-quick.md").read_text() == results


@pytest.mark.slow
def test_model_benchmark_compares_runtimes_per_size(quick: Path) -> None:
    document = load(quick, "model")
    work = document["work"]
    assert positive(work["macs_per_pixel"]) and work["flops_per_pixel"] == 2 * work["macs_per_pixel"]
    sizes = [images.label(tuple(size)) for size in document["config"]["sizes"]]
    rows = document["results"]
    assert [(r["size"], r["engine"]) for r in rows] == [(s, e) for s in sizes for e in ("pytorch", "onnxruntime")]
    for row in rows:
        for key in ("ms_per_image", "megapixels_per_s", "gflop_per_image", "achieved_gflops", "speedup_vs_eager"):
            assert positive(row[key]), (key, row)
        assert row["fraction_of_peak"] is None or positive(row["fraction_of_peak"])
        assert row["device"] == "cpu" and row["timing"]["repeats"] >= 1
    assert all(row["speedup_vs_eager"] == 1.0 for row in rows if row["baseline"])
    assert any("assumes 2 FMA units" in peak["assumption"] for peak in document["peaks"].values())
    sweep = document["ort_option_sweep"]
    assert sweep and sweep[0]["speedup_vs_service"] == 1.0
    assert all(positive(r["ms_per_image"]) and "error" not in r for r in sweep)


@pytest.mark.slow
def test_service_benchmark_reports_load_batching_and_overhead(quick: Path) -> None:
    document = load(quick, "service")
    config = document["config"]
    rows = document["results"]
    assert [(r["variant"], r["concurrency"]) for r in rows] == [
        (label, c) for label, _ in config["variants"] for c in config["concurrency"]
    ]
    for row in rows:
        assert row["ok"] == row["sent"] > 0 and row["errors"] == {}, row
        for key in (
            "throughput_rps",
            "megapixels_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "inference_ms_per_request",
            "server_mean_latency_ms",
            "server_rss_mb",
        ):
            assert positive(row[key]), (key, row)
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["mean_batch_size"] >= 1
    assert all(r["mean_batch_size"] == 1 for r in rows if r["variant"] == "batching off")
    assert {s["readyz"]["execution_provider"] for s in document["servers"].values()} == {"CPUExecutionProvider"}
    overhead = document["overhead"]
    assert [r["size"] for r in overhead] == [images.label(tuple(s)) for s in config["overhead_sizes"]]
    for row in overhead:
        for key in ("decode_ms", "plan_ms", "tiling_ms", "inference_ms", "encode_ms", "total_ms"):
            assert positive(row[key]), (key, row)
        assert 0 < row["overhead_fraction"] < 1
        assert row["tiles"] >= 1 and 1 <= row["batches"] <= row["tiles"]
    # The smallest upload runs whole. (With the cost-aware CPU default the quick sizes, 480x320 included, all fit
    # one window; the old fixed 256 px tiles split 480x320. Tiled requests are covered by the tiling benchmark.)
    assert overhead[0]["tiles"] == 1


@pytest.mark.slow
def test_tiling_benchmark_measures_time_and_memory_per_size(quick: Path) -> None:
    document = load(quick, "tiling")
    rows = document["results"]
    assert rows and not [r for r in rows if "error" in r or "skipped" in r]
    for row in rows:
        assert positive(row["median_s"]) and positive(row["base_rss_bytes"])
        assert row["peak_rss_bytes"] >= row["base_rss_bytes"]
        assert row["provider"] == "CPUExecutionProvider"
        assert row["seconds_per_output_megapixel"] == pytest.approx(row["median_s"] / row["megapixels"])
        assert row["computed_pixel_ratio"] >= 1
    assert all(r["tiles"] == 1 and r["plan"].startswith("whole ") for r in rows if r["mode"] == "whole")
    # The service default on a CPU is cost-aware; the quick preset's memory budget makes it split the largest size.
    assert {r["tiling"] for r in rows if r["mode"] == "tiled"} == {"cost-aware"}
    tiled = [r for r in rows if r["mode"] == "tiled" and r["tiles"] > 1]
    assert tiled and all(r["computed_pixel_ratio"] > 1 and math.isfinite(r["tiling_time_overhead"]) for r in tiled)
    assert all(" windows of " in r["plan"] for r in tiled)
    sweep = document["tile_size_sweep"]
    assert sweep[0]["service_default"] and sweep[0]["tile_size"] is None and sweep[0]["tiling"] == "cost-aware"
    assert sweep[0]["speedup_vs_default"] == 1.0
    old_default = [r for r in sweep if r["old_fixed_default"]]  # the fixed 256 px tiles, the "before" reference
    assert [(r["tile_size"], r["tiling"]) for r in old_default] == [(256, "fixed")]
    assert all(r["tiling"] == "fixed" and r["tile_core"] == r["tile_size"] for r in sweep[1:])
    assert all(positive(r["median_s"]) and positive(r["speedup_vs_default"]) for r in sweep)
    assert len({r["tile_size"] for r in sweep}) == len(sweep)


# --- pieces -------------------------------------------------------------------------------------


def test_the_metrics_read_under_load_are_the_ones_the_service_exports() -> None:
    metrics = Metrics()
    for histogram in (metrics.batch_size, metrics.queue_wait, metrics.inference_duration):
        histogram.observe(1)
    metrics.request_duration.labels("/enhance", "200").observe(0.5)
    metrics.errors.labels("overloaded").inc()
    snapshot = MetricsSnapshot.parse(metrics.exposition().decode())
    assert set(SAMPLES_READ) <= snapshot.names()
    metrics.batch_size.observe(2)
    metrics.batch_size.observe(3)
    later = MetricsSnapshot.parse(metrics.exposition().decode())
    assert (later - snapshot).value("frlie_batch_size_count") == 2
    assert snapshot.value("frlie_request_duration_seconds_count", route="/enhance") == 1


def _respond(status: int, delay_s: float = 0.0) -> httpx.AsyncBaseTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay_s)
        return httpx.Response(status, headers={"Retry-After": "0"}, content=b"x")

    return httpx.MockTransport(handler)


def test_load_generator_stops_at_the_request_count_and_counts_errors() -> None:
    spec = LoadSpec(concurrency=3, max_requests=7, max_seconds=60)
    result = asyncio.run(generate("http://bench.invalid", b"jpeg", spec, transport=_respond(503)))
    assert result.sent == 7 and result.ok == 0 and result.errors == {"503": 7}
    assert result.to_dict()["p50_ms"] is None

    ok = asyncio.run(generate("http://bench.invalid", b"jpeg", spec, transport=_respond(200)))
    summary = ok.to_dict()
    assert ok.sent == ok.ok == 7 and summary["error_count"] == 0 and positive(summary["throughput_rps"])


def test_load_generator_stops_at_the_wall_clock_cap() -> None:
    spec = LoadSpec(concurrency=2, max_requests=10_000, max_seconds=0.3)
    result = asyncio.run(generate("http://bench.invalid", b"jpeg", spec, transport=_respond(200, delay_s=0.05)))
    assert 0 < result.sent < 100  # 10 000 requests of 50 ms would take minutes


def test_measure_runs_at_least_min_and_at_most_max_repeats() -> None:
    calls: list[int] = []
    timing = measure(lambda: calls.append(1), warmup=2, min_repeats=3, max_repeats=5, budget_s=0.0)
    assert len(timing.warmup_s) == 2 and len(timing.samples_s) == 3 and len(calls) == 5
    timing = measure(lambda: None, warmup=0, min_repeats=1, max_repeats=4, budget_s=60.0)
    assert len(timing.samples_s) == 4 and timing.min_s <= timing.median_s


def _machine(**changes: Any) -> Machine:
    fields: dict[str, Any] = dict(
        cpu_model="test CPU",
        physical_cores=4,
        logical_cpus=8,
        usable_cpus=2,
        cpu_mhz=2500.0,
        simd=["avx2", "avx512f"],
        memory_gb=16.0,
        gpus=[],
        os="linux",
        python="3.11",
        packages={},
        load_average=None,
    )
    return Machine(**(fields | changes))


def test_peaks_are_estimated_with_their_assumption_or_reported_unknown() -> None:
    peak = cpu_peak(_machine())
    assert peak.gflops == pytest.approx(2 * 2.5 * 64) and "2 cores" in peak.assumption  # usable cores count
    assert cpu_peak(_machine(simd=["avx2"])).gflops == pytest.approx(2 * 2.5 * 32)
    assert cpu_peak(_machine(cpu_mhz=None)).gflops is None
    assert cpu_peak(_machine(), override_gflops=123.0).gflops == 123.0
    assert gpu_peak("NVIDIA H100 80GB HBM3", "fp16").gflops == pytest.approx(989_400)
    assert gpu_peak("NVIDIA H100 PCIe", "fp32").gflops == pytest.approx(51_200)
    unknown = gpu_peak("Some Future GPU", "fp32")
    assert unknown.gflops is None and "unknown" in unknown.assumption and unknown.fraction(1.0) is None


def test_sizes_and_numbers_parse_and_print_for_tables() -> None:
    assert images.parse_sizes("600x400, 1920x1080") == ((600, 400), (1920, 1080))
    with pytest.raises(ValueError):
        images.parse_size("600")
    assert images.model_input((6, 5), multiple=4).shape == (1, 3, 8, 8)
    printed = [num(v) for v in (1234.6, 12.345, 0.012345, None, float("nan"), 7)]
    assert printed == ["1235", "12.3", "0.0123", "–", "–", "7"]


@pytest.mark.skipif(bool(gpus()), reason="a GPU is present: the CUDA set really runs there")
def test_the_cuda_set_refuses_to_time_a_cpu_fallback(tmp_path: Path) -> None:
    assert main(["model", "--device", "cuda", "--quick", "--out", str(tmp_path)]) == EXIT_NO_DEVICE
    assert not (tmp_path / "model-cuda-quick.json").exists()


@pytest.mark.timeout(300)
def test_the_gpu_check_runs_its_code_briefly_on_the_cpu(tmp_path: Path) -> None:
    """`make gpu-check` has one call on a rarely lent GPU: the same code, tiny, must work here first."""
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    (training,) = report["training"]
    assert training["precision"] == "bf16" and 0 < training["seconds_per_step"] < 60
    assert training["schedule_minutes"] == pytest.approx(training["seconds_per_step"] * 8000 / 60)
    latency = {row["dtype"]: row for row in report["latency"]}
    assert latency["fp32"]["max_abs_vs_fp32"] == 0 and latency["fp32"]["median_ms"] > 0
    assert 0 < latency["bf16"]["max_abs_vs_fp32"] < 0.1  # reduced precision: close to fp32, not equal
    assert report["onnxruntime_cuda"] == {"ran": False}


@pytest.mark.skipif(bool(gpus()), reason="a GPU is present: the check really runs there")
def test_the_gpu_check_without_a_gpu_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--out", str(tmp_path)]) == gpu_check.EXIT_NO_DEVICE
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "gpu-check.json").exists()
