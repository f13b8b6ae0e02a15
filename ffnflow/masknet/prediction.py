"""Mask net prediction over a region of a volume, independent of how the volume is tiled.

A region is predicted in tiles. Each tile is grown by the model's receptive radius
(rounded up to the pooling alignment) and aligned to global multiples of
:attr:`MaskNetArch.alignment`, so every output voxel sees exactly the same input, whatever
the block or tile it belongs to. Outside the volume the image is mirrored (numpy's
``reflect``) about the volume's first and last voxels, computed from global coordinates.
Arrays are z, y, x; ROIs are global voxels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ffnflow.errors import InputError
from ffnflow.masknet.model import MaskNet
from ffnflow.volumes import Roi

ReadFn = Callable[[Roi], np.ndarray]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"masknet.device {device!r}: CUDA is not available on this machine")
    return torch.device(device)


def reflect_index(coords: np.ndarray, n: int) -> np.ndarray:
    """Indices into an axis of length ``n`` for coordinates beyond it, mirrored as numpy's
    ``np.pad(mode="reflect")`` does (about the first and last voxel, repeatedly)."""
    if n == 1:
        return np.zeros_like(coords)
    period = 2 * (n - 1)
    c = np.mod(coords, period)
    return np.where(c >= n, period - c, c)


def read_reflected(read: ReadFn, volume_shape: Sequence[int], roi: Roi) -> np.ndarray:
    """The volume over ``roi`` (may extend beyond it), mirrored outside the volume."""
    index = [
        reflect_index(np.arange(o, e), n) for o, e, n in zip(roi.offset, roi.end, volume_shape)
    ]
    lo = [int(i.min()) for i in index]
    hi = [int(i.max()) + 1 for i in index]
    source = read(Roi(lo, np.subtract(hi, lo)))
    return source[np.ix_(*(i - a for i, a in zip(index, lo)))]


def tile_context(model: MaskNet) -> tuple[int, int, int]:
    """Context (voxels, z, y, x) read around a tile: the receptive radius, aligned."""
    align = model.arch.alignment
    return tuple(-(-r // a) * a for r, a in zip(model.arch.receptive_radius, align))


def tile_read_roi(tile: Roi, model: MaskNet) -> Roi:
    """The input ROI of an output tile: grown by the context, aligned to global multiples."""
    align = model.arch.alignment
    grown = tile.grow(tile_context(model))
    start = [(o // a) * a for o, a in zip(grown.offset, align)]
    end = [-(-e // a) * a for e, a in zip(grown.end, align)]
    return Roi(start, np.subtract(end, start))


def tiles(roi: Roi, tile_zyx: Sequence[int]) -> list[Roi]:
    """Tiles of at most ``tile_zyx``, of nearly equal size, covering ``roi`` (z, y, x order)."""
    ranges = []
    for o, e, t in zip(roi.offset, roi.end, tile_zyx):
        size = -(-(e - o) // -(-(e - o) // t)) if e > o else 1  # ceil(L / ceil(L / t))
        ranges.append([(k, min(size, e - k)) for k in range(o, e, size)])
    return [
        Roi((z[0], y[0], x[0]), (z[1], y[1], x[1]))
        for z in ranges[0]
        for y in ranges[1]
        for x in ranges[2]
    ]


@torch.no_grad()
def predict_roi(
    model: MaskNet,
    read: ReadFn,
    volume_shape: Sequence[int],
    roi: Roi,
    normalization: dict[str, float],
    tile_zyx: Sequence[int] = (128, 128, 128),
    device: str = "cpu",
) -> np.ndarray:
    """Class probabilities (float32, ``(C, z, y, x)`` over ``roi``) of a volume.

    ``read(roi)`` returns raw voxels of a ROI inside the volume of ``volume_shape``;
    ``normalization`` holds ``image_mean`` and ``image_stddev`` (the model sees
    ``(raw - mean) / stddev``); ``tile_zyx`` bounds the output tile, hence memory.
    """
    if min(tile_zyx) < 1:
        raise InputError(f"masknet.tile_zyx {list(tile_zyx)}: must be >= 1")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    mean, std = float(normalization["image_mean"]), float(normalization["image_stddev"])
    out = np.zeros((len(model.arch.classes), *roi.shape), np.float32)
    for tile in tiles(roi, tile_zyx):
        read_roi = tile_read_roi(tile, model)
        image = (read_reflected(read, volume_shape, read_roi).astype(np.float32) - mean) / std
        logits = model(torch.from_numpy(np.ascontiguousarray(image))[None, None].to(dev))[0]
        inner = Roi(np.subtract(tile.offset, read_roi.offset), tile.shape).to_slices()
        prob = torch.sigmoid(logits[(slice(None), *inner)]).float().cpu().numpy()
        dest = Roi(np.subtract(tile.offset, roi.offset), tile.shape).to_slices()
        out[(slice(None), *dest)] = prob
    return out


def quantize(probability: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 as uint8 0..255 (rounded)."""
    return np.rint(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)


def whole_sections(fractions: np.ndarray, min_fraction: float) -> np.ndarray:
    """Sections (z indices) to exclude whole: those of which at least ``min_fraction`` is
    excluded already (``fractions`` per z). Lost, blank, dark, chattered and misaligned
    sections are defects of the whole section, of which the mask net sees only the parts
    with structure nearby; ``min_fraction`` >= 1 gives none."""
    if min_fraction >= 1.0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.asarray(fractions) >= min_fraction)
