"""Partitions of a label volume by local object fraction (google/ffn ``compute_partitions``).

For every voxel of an object, the fraction of the box of radius ``radius_zyx`` around it
that belongs to the same object, quantised by ``thresholds`` into partitions
``0 .. len(thresholds)``. Partitions separate voxels deep inside large objects from those
near boundaries and inside thin processes, so that training can sample them equally.
Arrays are z, y, x; sizes are voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np
from scipy import ndimage

from ffnflow.errors import InputError

DEFAULT_THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EXCLUDED = 255  # partition value of voxels that are never training centres


def clear_small_objects(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """A copy of ``labels`` with objects of fewer than ``min_voxels`` voxels set to 0."""
    ids, counts = fastremap.unique(labels, return_counts=True)
    small = ids[(counts < min_voxels) & (ids != 0)]
    out = np.array(labels, copy=True)
    if len(small):
        out[np.isin(labels, small)] = 0
    return out


def box_sums(mask: np.ndarray, radius_zyx: Sequence[int]) -> np.ndarray:
    """Sum of ``mask`` over the box of radius ``radius_zyx`` around every voxel whose box lies
    inside the array (a summed-area table); shape ``mask.shape - 2 * radius``."""
    r = np.asarray(radius_zyx, dtype=np.int64)
    d = 2 * r + 1
    if np.any(np.asarray(mask.shape) < d):
        return np.zeros(tuple(np.maximum(np.asarray(mask.shape) - 2 * r, 0)), dtype=np.int64)
    dtype = np.int32 if mask.size < 2**31 else np.int64
    table = np.zeros(tuple(s + 1 for s in mask.shape), dtype=dtype)
    table[1:, 1:, 1:] = mask.astype(dtype).cumsum(0).cumsum(1).cumsum(2)
    dz, dy, dx = (int(v) for v in d)
    hi_z, hi_y, hi_x = slice(dz, None), slice(dy, None), slice(dx, None)
    lo_z, lo_y, lo_x = slice(None, -dz), slice(None, -dy), slice(None, -dx)
    return (
        table[hi_z, hi_y, hi_x]
        - table[lo_z, hi_y, hi_x]
        - table[hi_z, lo_y, hi_x]
        - table[hi_z, hi_y, lo_x]
        + table[lo_z, lo_y, hi_x]
        + table[lo_z, hi_y, lo_x]
        + table[hi_z, lo_y, lo_x]
        - table[lo_z, lo_y, lo_x]
    )


def object_fraction(labels: np.ndarray, radius_zyx: Sequence[int]) -> np.ndarray:
    """For every voxel whose box of radius ``radius_zyx`` lies inside the volume, the fraction
    of that box belonging to the voxel's object (float32, shape ``labels.shape - 2 * radius``;
    NaN on label 0).

    Each object is handled inside its bounding box grown by the radius, so the cost is the
    sum of those boxes, not objects x volume.
    """
    r = np.asarray(radius_zyx, dtype=np.int64)
    shape = np.asarray(labels.shape)
    inner_shape = shape - 2 * r
    if np.any(inner_shape <= 0):
        raise InputError(
            f"partitions: volume {tuple(labels.shape)} is too small for a box of radius {tuple(r)}"
        )
    fraction = np.full(tuple(inner_shape), np.nan, dtype=np.float32)
    box_volume = float(np.prod(2 * r + 1))
    compact, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
    ids = {v: k for k, v in mapping.items()}
    for index, bbox in enumerate(ndimage.find_objects(compact), start=1):
        if bbox is None or ids.get(index, 0) == 0:
            continue
        # Centres: the object's bounding box, within the inner region (in inner coordinates).
        c_lo = np.maximum([s.start for s in bbox], r) - r
        c_hi = np.minimum([s.stop for s in bbox], shape - r) - r
        if np.any(c_hi <= c_lo):
            continue
        # Boxes around those centres, in volume coordinates.
        crop = tuple(slice(int(a), int(b + 2 * rr)) for a, b, rr in zip(c_lo, c_hi, r))
        sums = box_sums(compact[crop] == index, r)
        centres = tuple(slice(int(a), int(b)) for a, b in zip(c_lo, c_hi))
        centre_labels = compact[
            tuple(slice(int(a + rr), int(b + rr)) for a, b, rr in zip(c_lo, c_hi, r))
        ]
        own = centre_labels == index
        fraction[centres][own] = sums[own] / box_volume
    return fraction


def compute_partitions(
    labels: np.ndarray,
    radius_zyx: Sequence[int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_object_voxels: int = 10000,
) -> np.ndarray:
    """Partition of every voxel (uint8, the shape of ``labels``, z, y, x).

    ``k`` in ``0 .. len(thresholds)``: the voxel's object fraction (:func:`object_fraction`
    with ``radius_zyx``) lies in ``[thresholds[k-1], thresholds[k])``. :data:`EXCLUDED`
    (255) for voxels within ``radius_zyx`` of the border, on label 0 or on objects smaller
    than ``min_object_voxels``.
    """
    if labels.ndim != 3:
        raise InputError(f"partitions: expected 3D z,y,x labels, got shape {labels.shape}")
    thresholds = np.asarray(sorted(thresholds), dtype=np.float32)
    if len(thresholds) >= EXCLUDED:
        raise InputError(f"partitions: at most {EXCLUDED - 1} thresholds")
    r = np.asarray(radius_zyx, dtype=np.int64)
    cleared = clear_small_objects(labels, min_object_voxels)
    fraction = object_fraction(cleared, r)
    parts = np.full(labels.shape, EXCLUDED, dtype=np.uint8)
    inner = tuple(slice(int(a), int(n - a)) for a, n in zip(r, labels.shape))
    valid = ~np.isnan(fraction)
    inner_parts = np.full(fraction.shape, EXCLUDED, dtype=np.uint8)
    inner_parts[valid] = np.digitize(fraction[valid], thresholds).astype(np.uint8)
    parts[inner] = inner_parts
    return parts
