"""Exact tiling: split an image into same-shape model inputs and stitch their outputs back.

The network is fully convolutional with a known receptive radius, so an output pixel depends
only on input pixels within that radius. Each tile is a core (the pixels it writes) plus a halo
of at least the radius on every side that is not an image border; windows start on multiples of
the model's stride (4) so the stride phase matches, and windows at the borders are shifted
inward (never shrunk) so the network's own border padding sees exactly what it sees on the whole
image. Under those conditions the stitched result equals the whole-image result.

The "whole image" is the image padded at the bottom/right to a multiple of 4 and at least
``MIN_SIDE`` (reflection, or edge replication where reflection would run out of pixels), which
is what the network needs anyway. Images with no more pixels than one window run whole.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# The network's internal reflection padding (dilation 4 at 1/4 scale) needs each side >= 20 px.
MIN_SIDE = 20


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis: where its window starts and which output pixels it owns."""

    start: int
    out_start: int
    out_stop: int


@dataclass(frozen=True)
class Tile:
    """A model-input window (top-left in padded coordinates) and the output rectangle it fills."""

    rows: Span
    cols: Span


@dataclass(frozen=True)
class TilePlan:
    """How one image of ``height`` x ``width`` is cut into windows of ``window_shape``."""

    height: int
    width: int
    window_shape: tuple[int, int]
    tiles: tuple[Tile, ...]
    row_index: np.ndarray  # padded row -> source row (implements the bottom padding)
    col_index: np.ndarray  # padded column -> source column (implements the right padding)

    @property
    def is_whole_image(self) -> bool:
        return len(self.tiles) == 1

    @property
    def computed_pixels(self) -> int:
        """Pixels the network computes for this image (windows x window area): what it costs."""
        return len(self.tiles) * self.window_shape[0] * self.window_shape[1]

    def describe(self) -> str:
        """``3x2 windows of 1532x1648`` (rows x columns, height x width) or ``whole 600x400``."""
        rows = len({tile.rows for tile in self.tiles})
        cols = len(self.tiles) // rows
        height, width = self.window_shape
        return f"whole {height}x{width}" if self.is_whole_image else f"{rows}x{cols} windows of {height}x{width}"


def padded_length(length: int, multiple: int) -> int:
    """The side length the network is run on: a multiple of ``multiple`` and at least MIN_SIDE."""
    return max(-(-MIN_SIDE // multiple) * multiple, -(-length // multiple) * multiple)


def halo_for(receptive_radius: int, multiple: int) -> int:
    """The smallest halo that is >= the receptive radius and keeps window offsets on the stride grid."""
    return max(multiple, -(-receptive_radius // multiple) * multiple)


def _padding_index(length: int, target: int) -> np.ndarray:
    """Source index of every padded position: identity, then reflection (or edge replication)."""
    pad = target - length
    tail = length - 2 - np.arange(pad) if pad < length else np.full(pad, length - 1)
    return np.concatenate([np.arange(length), tail]).astype(np.intp)


def _axis_spans(length: int, padded: int, window: int, core: int, halo: int, multiple: int) -> list[Span]:
    """Evenly spaced windows covering one axis, each owning the pixels nearest its centre."""
    if padded <= window:
        return [Span(0, 0, length)]
    # Interior cores must reach from one halo to the next: count * core >= padded - 2 * halo.
    count = max(2, -(-(padded - 2 * halo) // core))
    steps = (padded - window) // multiple  # window positions available, in stride units
    # Rounded even spacing: consecutive starts differ by <= core, so neighbouring cores touch.
    starts = [multiple * ((2 * i * steps + count - 1) // (2 * (count - 1))) for i in range(count)]
    cuts = [0] + [(a + b + window) // 2 for a, b in itertools.pairwise(starts)] + [length]
    return [Span(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


def plan_tiles(height: int, width: int, *, core: int, receptive_radius: int, multiple: int) -> TilePlan:
    """Cut an image into windows of one shape; ``core`` must be a multiple of ``multiple``."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    if core % multiple:
        raise ValueError(f"tile core {core} is not a multiple of {multiple}")
    halo = halo_for(receptive_radius, multiple)
    window = core + 2 * halo
    padded_h, padded_w = padded_length(height, multiple), padded_length(width, multiple)
    if padded_h * padded_w <= window * window:
        # No more pixels than one tile (so no more memory): run whole and skip the halo overhead.
        return _plan(height, width, (padded_h, padded_w), halo, multiple)
    return _plan(height, width, (min(window, padded_h), min(window, padded_w)), halo, multiple)


def _axis_windows(padded: int, halo: int, multiple: int) -> list[tuple[int, int]]:
    """(windows, window length) for every useful way to cut one axis: 1 window of the whole axis,
    then, for each count n >= 2, the shortest window on the stride grid that n windows with full
    interior halos need (counts that do not shorten the window are skipped)."""
    options = [(1, padded)]
    for count in range(2, padded // multiple + 2):
        core = -(-max(multiple, -(-(padded - 2 * halo) // count)) // multiple) * multiple
        window = max(2 * halo + core, padded_length(1, multiple))  # the network needs >= MIN_SIDE
        if window < options[-1][1]:
            options.append((count, window))
        if window == max(2 * halo + multiple, padded_length(1, multiple)):  # the shortest window there is
            break
    return options


def plan_within_budget(
    height: int, width: int, *, max_window_pixels: int, receptive_radius: int, multiple: int
) -> TilePlan:
    """The plan that computes the fewest pixels with no window above ``max_window_pixels``.

    The whole image when it fits; otherwise every grid of rows x columns is considered, each with
    the smallest window (not necessarily square) that covers it with full halos, and the one with
    the least windows x window area wins (ties: fewer windows, so fewer ORT calls). If even the
    smallest window allowed by the halo is over the budget, that smallest window is used.
    """
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    halo = halo_for(receptive_radius, multiple)
    padded_h, padded_w = padded_length(height, multiple), padded_length(width, multiple)
    if padded_h * padded_w <= max_window_pixels:
        return _plan(height, width, (padded_h, padded_w), halo, multiple)
    best: tuple[int, int, tuple[int, int]] | None = None
    column_options = _axis_windows(padded_w, halo, multiple)
    row_options = _axis_windows(padded_h, halo, multiple)
    smallest = (row_options[-1][1], column_options[-1][1])
    for rows, window_h in row_options:
        # More columns only add halo overhead, so the fewest columns that fit is best for this row count.
        fitting = next(((c, w) for c, w in column_options if window_h * w <= max_window_pixels), None)
        if fitting is None:
            continue
        cols, window_w = fitting
        candidate = (rows * cols * window_h * window_w, rows * cols, (window_h, window_w))
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    window_shape = best[2] if best is not None else smallest
    return _plan(height, width, window_shape, halo, multiple)


def _plan(height: int, width: int, window_shape: tuple[int, int], halo: int, multiple: int) -> TilePlan:
    """The tiles of windows of ``window_shape`` (the padded image itself when it is that size)."""
    padded_h, padded_w = padded_length(height, multiple), padded_length(width, multiple)
    window_h, window_w = window_shape
    row_spans = _axis_spans(height, padded_h, window_h, window_h - 2 * halo, halo, multiple)
    col_spans = _axis_spans(width, padded_w, window_w, window_w - 2 * halo, halo, multiple)
    tiles = tuple(Tile(rows, cols) for rows in row_spans for cols in col_spans)
    return TilePlan(
        height=height,
        width=width,
        window_shape=window_shape,
        tiles=tiles,
        row_index=_padding_index(height, padded_h),
        col_index=_padding_index(width, padded_w),
    )


def tile_window_shape(core: int, receptive_radius: int, multiple: int) -> tuple[int, int]:
    """The model input shape of every tile of an image larger than one window."""
    side = core + 2 * halo_for(receptive_radius, multiple)
    return side, side


def extract_tile(image: np.ndarray, plan: TilePlan, tile: Tile, out: np.ndarray, gain: float = 1.0) -> None:
    """Write the tile's window of ``image`` (H x W x 3, uint8 or float in [0, 1]) into ``out`` (3 x h x w
    float32), multiplied by ``gain`` (the exposure normalisation: per pixel, so tiling stays exact)."""
    height, width = plan.window_shape
    rows = plan.row_index[tile.rows.start : tile.rows.start + height]
    cols = plan.col_index[tile.cols.start : tile.cols.start + width]
    window = image[np.ix_(rows, cols)]
    out[...] = window.transpose(2, 0, 1)
    if image.dtype == np.uint8:
        out /= np.float32(255.0)
    if gain != 1.0:
        out *= np.float32(gain)


def stitch_tile(output: np.ndarray, tile: Tile, result: np.ndarray) -> None:
    """Copy the core of one tile's model output (3 x h x w float32) into ``output`` (H x W x 3).

    A uint8 ``output`` receives values rounded from [0, 1]; a float one receives them unchanged.
    """
    rows, cols = tile.rows, tile.cols
    core = result[
        :,
        rows.out_start - rows.start : rows.out_stop - rows.start,
        cols.out_start - cols.start : cols.out_stop - cols.start,
    ].transpose(1, 2, 0)
    target = output[rows.out_start : rows.out_stop, cols.out_start : cols.out_stop]
    if output.dtype == np.uint8:
        target[...] = np.rint(np.clip(core, 0.0, 1.0) * 255.0)
    else:
        target[...] = core
