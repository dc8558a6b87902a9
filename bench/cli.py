"""Command line: `python -m bench {model,service,tiling,all} [--device cpu|cuda] [--quick] ...`.

Each benchmark writes ``OUT/<name>-<device>[-quick].json`` (machine, configuration, every
sample) and prints its markdown tables; ``all`` also writes ``OUT/RESULTS-<device>[-quick].md``,
the tables as they go into bench/RESULTS.md, and ``render`` rebuilds that file from stored JSON.
OUT defaults to bench/results/ (not tracked by git).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import RESULTS_DIR, model_bench, service_bench, tiling_bench
from bench.images import parse_size, parse_sizes
from bench.machine import Machine, caption, describe
from bench.models import BUNDLED, ModelStore
from bench.report import timestamp, write_json
from bench.service_config import DEVICES, DeviceUnavailable, parse_assignments

log = logging.getLogger("bench")
NAMES = ("model", "service", "tiling")
QUIET_LOGGERS = ("httpx", "httpcore", "onnx_ir", "onnxscript", "torch.onnx")
EXIT_NO_DEVICE = 3


@dataclass(frozen=True)
class Context:
    """What every benchmark of one invocation shares."""

    args: argparse.Namespace
    machine: Machine
    store: ModelStore
    out: Path

    @property
    def suffix(self) -> str:
        return self.suffix_for(self.args)

    @staticmethod
    def suffix_for(args: argparse.Namespace) -> str:
        """File name suffix: the device, and whether the numbers are a quick smoke run."""
        return f"{args.device}{'-quick' if args.quick else ''}"


# --- configurations from arguments ------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _service_variant(text: str) -> service_bench.ServiceVariant:
    """'LABEL:name=value,name=value' -> (label, ((FRLIE_NAME, value), ...))."""
    label, sep, assignments = text.partition(":")
    if not sep or not label.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL:NAME=VALUE[,NAME=VALUE], got {text!r}")
    return label.strip(), tuple(parse_assignments([a for a in assignments.split(",") if a.strip()]).items())


def _series(text: str) -> tiling_bench.Series:
    """'MODEL=WxH,WxH' -> Series."""
    model, sep, sizes = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected MODEL=WxH[,WxH], got {text!r}")
    return tiling_bench.Series(model.strip(), parse_sizes(sizes))


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among ``names`` given on the command line (each subcommand defines its own)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) not in (None, False)}


def _model_config(args: argparse.Namespace) -> model_bench.ModelBenchConfig:
    config = model_bench.ModelBenchConfig.preset(args.device, args.quick)
    changes = _given(args, "model", "sizes", "budget_s", "cpu_peak_gflops")
    if getattr(args, "no_sweep", False):
        changes["sweep_size"] = None
    return dataclasses.replace(config, **changes)


def _service_config(args: argparse.Namespace) -> service_bench.ServiceBenchConfig:
    config = service_bench.ServiceBenchConfig.preset(args.device, args.quick)
    changes = _given(args, "model", "image_size", "concurrency", "requests_per_client", "min_requests", "max_seconds")
    if getattr(args, "variant", None):
        changes["variants"] = config.variants + tuple(args.variant)
    if getattr(args, "set", None):
        changes["common"] = tuple(parse_assignments(args.set).items())
    return dataclasses.replace(config, **changes)


def _tiling_config(args: argparse.Namespace) -> tiling_bench.TilingBenchConfig:
    config = tiling_bench.TilingBenchConfig.preset(args.device, args.quick)
    changes = _given(args, "series", "sweep_size", "tile_sizes", "repeats", "max_case_s")
    if args.model:  # takes the real model's place; the tiny model keeps carrying the large sizes
        changes["sweep_model"] = args.model
        changes.setdefault(
            "series",
            tuple(dataclasses.replace(s, model=args.model) if s.model == BUNDLED else s for s in config.series),
        )
    if "series" in changes:
        changes["series"] = tuple(changes["series"])
    return dataclasses.replace(config, **changes)


# --- running ------------------------------------------------------------------------------------

MARKDOWN: dict[str, Callable[[dict[str, Any], str], str]] = {
    "model": model_bench.markdown,
    "service": service_bench.markdown,
    "tiling": tiling_bench.markdown,
}


def _measure(name: str, ctx: Context) -> dict[str, Any]:
    args = ctx.args
    if name == "model":
        return model_bench.run(_model_config(args), ctx.store, ctx.machine)
    if name == "service":
        return service_bench.run(_service_config(args), ctx.store, ctx.out / "logs")
    return tiling_bench.run(_tiling_config(args), ctx.store)


def run_one(name: str, ctx: Context) -> dict[str, Any]:
    """Run one benchmark, write its JSON and print its tables; returns the JSON document."""
    started = time.perf_counter()
    log.info("%s benchmark (%s) starting", name, ctx.suffix)
    result = _measure(name, ctx)
    document = {
        "benchmark": name,
        "created": timestamp(),
        "command": sys.argv,
        "elapsed_s": time.perf_counter() - started,
        "machine": ctx.machine.to_dict(),
        **result,
    }
    document["markdown"] = MARKDOWN[name](document, caption(ctx.machine))
    path = write_json(ctx.out / f"{name}-{ctx.suffix}.json", document)
    print(document["markdown"], flush=True)
    log.info("%s benchmark done in %.0f s -> %s", name, document["elapsed_s"], path)
    return document


def write_results(out: Path, suffix: str, documents: list[dict[str, Any]]) -> Path:
    """RESULTS-<suffix>.md: every table, re-rendered from the JSON documents, under one header."""
    device, _, quick = suffix.partition("-")
    minutes = sum(d["elapsed_s"] for d in documents) / 60
    header = (
        f"## Performance ({device.upper()})\n\nReproduce with `python -m bench all"
        f"{' --device cuda' if device == 'cuda' else ''}{' --quick' if quick else ''}` ({minutes:.1f} min on this "
        f"machine, {documents[0]['created'] if documents else timestamp()}); every sample is in "
        f"`bench/results/*-{suffix}.json`.\n"
    )
    parts = [MARKDOWN[d["benchmark"]](d, caption(Machine.from_dict(d["machine"]))) for d in documents]
    path = out / f"RESULTS-{suffix}.md"
    path.write_text("\n".join([header, *parts]))
    return path


def render(out: Path, suffix: str) -> Path:
    """Rebuild RESULTS-<suffix>.md from JSON already in ``out`` (benchmarks run one at a time, say)."""
    found = [out / f"{name}-{suffix}.json" for name in NAMES if (out / f"{name}-{suffix}.json").is_file()]
    if not found:
        raise FileNotFoundError(f"no {{{','.join(NAMES)}}}-{suffix}.json in {out}")
    return write_results(out, suffix, [json.loads(path.read_text()) for path in found])


def run_all(ctx: Context) -> Path:
    documents = [run_one(name, ctx) for name in NAMES]
    path = write_results(ctx.out, ctx.suffix, documents)
    log.info("all benchmarks done in %.1f min -> %s", sum(d["elapsed_s"] for d in documents) / 60, path)
    return path


# --- arguments ----------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="cpu (default) or cuda (the GPU set)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, small sizes, few runs: a smoke test in seconds"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON (and RESULTS-*.md) go")
    parser.add_argument(
        "--model",
        default=None,
        help="bundled (default: model/weights/frlie.onnx, or random default-architecture weights "
        "if it is absent), default, tiny, or a path to an exported .onnx",
    )
    parser.add_argument(
        "--cpu-peak-gflops",
        type=float,
        default=None,
        help="use this FP32 peak instead of the estimate from CPU flags and clock",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="PyTorch eager vs ONNX Runtime, FLOPs and fraction of peak")
    _common(model)
    model.add_argument("--sizes", type=parse_sizes, help="e.g. 600x400,1920x1080,3840x2160")
    model.add_argument("--budget-s", type=float, help="timed seconds per case (at least one run)")
    model.add_argument("--no-sweep", action="store_true", help="skip the ONNX Runtime options sweep")

    service = commands.add_parser("service", help="load on a real server: throughput, latency, batching, overhead")
    _common(service)
    service.add_argument("--image-size", type=parse_size, help="upload size, default 600x400")
    service.add_argument("--concurrency", type=_ints, help="client counts, e.g. 1,4,16")
    service.add_argument("--requests-per-client", type=int, help="requests per level = max(min, this x clients)")
    service.add_argument("--min-requests", type=int)
    service.add_argument("--max-seconds", type=float, help="wall-clock cap per concurrency level")
    service.add_argument(
        "--variant",
        type=_service_variant,
        action="append",
        help="extra server configuration 'LABEL:name=value,...' (e.g. 'batch 4:max_batch_pixels=960000')",
    )
    service.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="FRLIE_* setting for every server (e.g. intra_op_threads=1)",
    )

    tiling = commands.add_parser("tiling", help="time and peak RSS against image size, tiled vs whole")
    _common(tiling)
    tiling.add_argument("--series", type=_series, action="append", help="MODEL=WxH,WxH (replaces the preset series)")
    tiling.add_argument("--sweep-size", type=parse_size, help="image size of the tile-size sweep")
    tiling.add_argument("--tile-sizes", type=_ints, help="tile sizes compared with the default, e.g. 512,1024")
    tiling.add_argument("--repeats", type=int, help="timed runs per case")
    tiling.add_argument("--max-case-s", type=float, help="skip cases predicted to take longer (seconds)")

    every = commands.add_parser("all", help="model, service and tiling with the presets (CPU set under 10 minutes)")
    _common(every)

    again = commands.add_parser("render", help="rebuild RESULTS-<device>.md from the JSON of earlier runs")
    _common(again)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.command == "render":
        print(render(args.out, Context.suffix_for(args)).read_text())
        return 0
    with tempfile.TemporaryDirectory(prefix="frlie-bench-") as scratch:
        ctx = Context(args, describe(), ModelStore(Path(scratch)), args.out)
        try:
            if args.command == "all":
                run_all(ctx)
            else:
                run_one(args.command, ctx)
        except DeviceUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_NO_DEVICE
    return 0
