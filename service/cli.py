"""`python -m service serve` (the HTTP service) and `python -m service enhance IN... -o OUT` (folders, no HTTP).

Both read the same FRLIE_* settings and run images through the same Pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from service.engine import Engine, missing_model_message
from service.errors import ServiceError
from service.imageio import OutputFormat
from service.memory import return_freed_buffers_to_the_os
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings
from service.strength import AUTO, Strength, parse_strength

INPUT_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
OUTPUT_SUFFIXES = {
    OutputFormat.png: ".png",
    OutputFormat.jpeg: ".jpg",
    OutputFormat.webp: ".webp",
    OutputFormat.avif: ".avif",
}
EXIT_USAGE = 2


class WindowsBar:
    """One file's model windows on the shared "windows" bar (service.pipeline.Progress): a large photo's
    progress shows within it, not only when the file is done. Files in flight add their windows to the
    total as their plans are made; ``close`` takes back windows a file planned but did not run."""

    def __init__(self, bar: tqdm, name: str) -> None:
        self.bar, self.name = bar, name
        self.windows = self.done = 0

    def planned(self, windows: int, seconds: float | None) -> None:
        self.bar.total = (self.bar.total or 0) + windows - self.windows
        self.windows = windows
        self.bar.set_postfix_str(self.name, refresh=False)
        self.bar.refresh()

    def window_done(self) -> None:
        self.done += 1
        self.bar.update()

    def close(self) -> None:
        if self.windows > self.done:
            self.bar.total -= self.windows - self.done
            self.bar.refresh()


def _model_missing(settings: Settings) -> bool:
    if settings.model_path.is_file():
        return False
    print(f"error: {missing_model_message(settings.model_path)}", file=sys.stderr)
    return True


def serve(args: argparse.Namespace) -> int:
    """Run uvicorn in this process; SIGTERM stops accepting and lets in-flight requests finish."""
    import uvicorn

    from service.app import create_app

    settings = Settings()
    if _model_missing(settings):
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_freed_buffers_to_the_os()
    config = uvicorn.Config(
        create_app(settings),
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
    uvicorn.Server(config).run()
    return 0


def _collect_inputs(inputs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image file named or inside a named folder."""
    found: list[tuple[Path, Path]] = []
    for root in inputs:
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            found.extend((path, path.relative_to(root)) for path in files)
        elif root.is_file():
            found.append((root, Path(root.name)))
        else:
            raise FileNotFoundError(f"{root} does not exist")
    return found


async def _enhance_files(
    jobs: list[tuple[Path, Path]],
    settings: Settings,
    requested: OutputFormat | None,
    quality: int | None,
    workers: int,
    strength: Strength = AUTO,
) -> int:
    """Enhance (source, output path without suffix) pairs; the suffix follows the chosen encoding."""
    engine = await asyncio.to_thread(Engine, settings)
    pipeline = Pipeline(engine, settings, Metrics())
    tqdm.write(f"model {engine.model_version} on {engine.providers}", file=sys.stderr)
    failures = 0
    slots = asyncio.Semaphore(workers)

    async def one(source: Path, target: Path, progress: tqdm, windows: tqdm) -> None:
        nonlocal failures
        async with slots:
            bar = WindowsBar(windows, source.name)
            try:
                result = await pipeline.process(
                    await asyncio.to_thread(source.read_bytes), requested, quality, strength, progress=bar
                )
                target = target.with_suffix(OUTPUT_SUFFIXES[result.spec.format])
                target.parent.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(target.write_bytes, result.data)
            except (ServiceError, OSError) as error:
                failures += 1
                tqdm.write(f"skipped {source}: {getattr(error, 'detail', error)}", file=sys.stderr)
            bar.close()
            progress.update()

    try:
        with (
            tqdm(total=len(jobs), unit="img", desc="enhancing", position=0) as progress,
            tqdm(total=0, unit="window", desc="windows", position=1) as windows,
        ):
            await asyncio.gather(*(one(source, target, progress, windows) for source, target in jobs))
    finally:
        await pipeline.close()
    return 1 if failures else 0


def enhance(args: argparse.Namespace) -> int:
    """Enhance files and folders into an output folder, keeping relative paths."""
    settings = Settings()
    if _model_missing(settings):
        return EXIT_USAGE
    try:
        inputs = _collect_inputs(args.inputs)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    jobs = [(source, args.output / relative.with_suffix("")) for source, relative in inputs]
    targets = [target for _, target in jobs]
    if len(set(targets)) != len(targets):
        print("error: two inputs share a name (apart from the suffix); enhance them separately", file=sys.stderr)
        return EXIT_USAGE
    if not jobs:
        print("error: no images found (accepted: " + ", ".join(sorted(INPUT_SUFFIXES)) + ")", file=sys.stderr)
        return EXIT_USAGE
    return_freed_buffers_to_the_os()
    return asyncio.run(_enhance_files(jobs, settings, args.format, args.quality, args.jobs, args.strength))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service", description="FRLIE low-light enhancement service (settings: FRLIE_* variables)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP service (default 127.0.0.1:8000)")
    serve_parser.add_argument("--host", default=None, help="bind address (default: FRLIE_HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, default=None, help="port (default: FRLIE_PORT or 8000)")
    serve_parser.set_defaults(func=serve)

    enhance_parser = commands.add_parser("enhance", help="enhance image files or folders without HTTP")
    enhance_parser.add_argument(
        "inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)"
    )
    enhance_parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    enhance_parser.add_argument(
        "--format",
        type=OutputFormat,
        choices=list(OutputFormat),
        default=None,
        metavar="{png,jpeg,webp,avif}",
        help="output encoding (default: JPEG for JPEG and HEIC input, AVIF for AVIF, PNG otherwise, at 16 bits "
        "for 16-bit input)",
    )
    enhance_parser.add_argument("--quality", type=int, choices=range(1, 101), metavar="1-100", default=None)
    enhance_parser.add_argument(
        "--jobs",
        type=int,
        choices=range(1, 65),
        metavar="N",
        default=2,
        help="files processed at once, so their tiles can share batches (default 2)",
    )
    enhance_parser.add_argument(
        "--strength",
        type=parse_strength,
        default=AUTO,
        metavar="auto|0-1",
        help="'auto' (default: up to a normal brightness; bright photos come back unchanged) "
        "or 0 (unchanged) to 1 (model output)",
    )
    enhance_parser.set_defaults(func=enhance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
