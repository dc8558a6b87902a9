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
    count = max(2, -(-(padded - 2 * halo) // core))
    steps = (padded - window) // multiple  # window positions available, in stride units
    # Rounded even spacing: consecutive starts differ by <= core, so neighbouring cores touch.
    starts = [multiple * ((2 * i * steps + count - 1) // (2 * (count - 1))) for i in range(count)]
    cuts = [0] + [(a + b + window) // 2 for a, b in zip(starts, starts[1:])] + [length]
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
        window_shape = (padded_h, padded_w)
        tiles: tuple[Tile, ...] = (Tile(Span(0, 0, height), Span(0, 0, width)),)
    else:
        window_shape = (min(window, padded_h), min(window, padded_w))
        row_spans = _axis_spans(height, padded_h, window, core, halo, multiple)
        col_spans = _axis_spans(width, padded_w, window, core, halo, multiple)
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


def extract_tile(image: np.ndarray, plan: TilePlan, tile: Tile, out: np.ndarray) -> None:
    """Write the tile's window of ``image`` (H x W x 3, uint8 or float in [0, 1]) into ``out`` (3 x h x w float32)."""
    height, width = plan.window_shape
    rows = plan.row_index[tile.rows.start : tile.rows.start + height]
    cols = plan.col_index[tile.cols.start : tile.cols.start + width]
    window = image[np.ix_(rows, cols)]
    out[...] = window.transpose(2, 0, 1)
    if image.dtype == np.uint8:
        out /= np.float32(255.0)


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
