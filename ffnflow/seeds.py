"""Seed placement: where flood filling starts, and the seed file format.

Seeds are z, y, x voxel positions in the global coordinates of the dataset. The seed file
is a CSV with header ``z,y,x``, one seed per row, in the order they are to be tried.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cc3d
import edt
import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max

from ffnflow.atomic import atomic_output
from ffnflow.errors import InputError

SEED_POLICIES = ("sobel_peaks", "masknet_peaks")


def sobel_edges(image: np.ndarray, sigma: float = 49.0 / 6.0) -> np.ndarray:
    """Edge voxels (bool, z, y, x): 3D Sobel gradient magnitude above its Gaussian blur."""
    grad = ndimage.generic_gradient_magnitude(image.astype(np.float32), ndimage.sobel)
    local = np.zeros(grad.shape, dtype=np.float32)
    ndimage.gaussian_filter(grad, sigma, output=local, mode="reflect")
    return grad > local


def sobel_peak_seeds(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    resolution_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    min_distance: int = 3,
    noise_seed: int = 42,
) -> np.ndarray:
    """Seeds at peaks of the distance to the nearest edge: google/ffn's PolicyPeaks.

    ``image`` is the normalised EM image (z, y, x); ``mask`` (True = excluded) counts as
    edge and never holds a seed. Distances are anisotropic in units of the finest axis, so
    isotropic data reproduce the reference exactly. Ties between equal distances are
    broken by fixed uniform noise (1e-4, numpy seed ``noise_seed``). Returns an
    ``(N, 3)`` int64 array of z, y, x positions in ascending lexicographic order.
    """
    if image.ndim != 3:
        raise InputError(f"seed placement image: expected 3D z,y,x, got shape {image.shape}")
    edges = sobel_edges(image)
    if mask is not None:
        edges[mask] = True
    return _distance_peaks(edges, mask, resolution_nm, min_distance, noise_seed, 0.0)


def _distance_peaks(
    edges: np.ndarray,
    mask: np.ndarray | None,
    resolution_nm: tuple[float, float, float],
    min_distance: int,
    noise_seed: int,
    min_value: float,
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """Peaks (sorted z, y, x) of the distance to ``edges``, at least ``min_value``, not in
    ``mask``; with ``regions`` (int labels, 0 = none) the peaks of each region on its own."""
    res = np.asarray(resolution_nm, dtype=np.float64)
    if not edges.any():
        dist = np.ones(edges.shape, dtype=np.float32)
    else:
        dist = edt.edt(
            (~edges).astype(np.uint8), anisotropy=tuple(res / res.min()), black_border=False
        ).astype(np.float32)
    noise = np.random.RandomState(noise_seed).random_sample(dist.shape) * 1e-4
    peaks = peak_local_max(
        dist + noise,
        min_distance=min_distance,
        threshold_abs=min_value,
        threshold_rel=0,
        labels=regions,
    )
    if mask is not None and len(peaks):
        peaks = peaks[~mask[tuple(peaks.T)]]
    order = np.lexsort(peaks.T[::-1]) if len(peaks) else np.zeros(0, dtype=np.int64)
    return peaks[order].astype(np.int64).reshape(-1, 3)


def masknet_peak_seeds(
    boundary: np.ndarray,
    mask: np.ndarray | None = None,
    resolution_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    min_distance: int = 3,
    threshold: float = 0.5,
    min_boundary_distance: float = 2.0,
    max_local_boundary: float = 1.0,
    local_radius: int = 1,
    noise_seed: int = 42,
) -> np.ndarray:
    """Seeds at peaks of the distance to the mask net's boundaries, in every cell region.

    ``boundary`` is the boundary probability (float 0..1, z, y, x); voxels at or above
    ``threshold`` are membrane. ``mask`` (True = excluded, e.g. the mask net's
    ``exclude``) counts as membrane too and never holds a seed. The rest falls into
    regions (6-connected, cc3d); each region gets the peaks of its own distance to
    membrane (anisotropic, in units of the finest axis; ``peak_local_max(min_distance)``
    within the region, ties broken by fixed noise), at least ``min_boundary_distance`` from
    membrane and ``min_distance`` from the volume's faces: a region whose deepest part lies
    at a face gets a peak where it is deepest inside that margin. A peak is kept only
    where the mean boundary probability over the box of ``local_radius`` voxels (of the
    finest axis) around it is at most ``max_local_boundary``: weak, gappy membranes
    nearby mean the region may be two cells. Returns ``(N, 3)`` int64 z, y, x positions
    in ascending lexicographic order.
    """
    if boundary.ndim != 3:
        raise InputError(
            f"seed placement boundary map: expected 3D z,y,x, got shape {boundary.shape}"
        )
    edges = boundary >= threshold
    if mask is not None:
        edges |= mask
    regions = cc3d.connected_components(~edges, connectivity=6)
    peaks = _distance_peaks(
        edges, mask, resolution_nm, min_distance, noise_seed, min_boundary_distance, regions
    )
    if max_local_boundary < 1.0 and len(peaks):
        res = np.asarray(resolution_nm, dtype=np.float64)
        size = tuple(2 * max(0, int(round(local_radius * res.min() / r))) + 1 for r in res)
        local = ndimage.uniform_filter(
            np.asarray(boundary, dtype=np.float32), size=size, mode="reflect"
        )
        peaks = peaks[local[tuple(peaks.T)] <= max_local_boundary]
    return peaks


def place_seeds(
    image: np.ndarray | None,
    policy: str = "sobel_peaks",
    mask: np.ndarray | None = None,
    resolution_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    min_distance: int = 3,
    boundary: np.ndarray | None = None,
    boundary_threshold: float = 0.5,
    min_boundary_distance: float = 2.0,
    max_local_boundary: float = 1.0,
    local_radius: int = 1,
) -> np.ndarray:
    """Seeds (``(N, 3)`` z, y, x) by the named policy.

    ``sobel_peaks`` reads the normalised ``image``; ``masknet_peaks`` the mask net's
    ``boundary`` probability (0..1) with ``boundary_threshold``, ``min_boundary_distance``,
    ``max_local_boundary`` and ``local_radius`` (:func:`masknet_peak_seeds`).
    """
    if policy == "sobel_peaks":
        return sobel_peak_seeds(image, mask, resolution_nm, min_distance)
    if policy == "masknet_peaks":
        if boundary is None:
            raise InputError("seeds.policy masknet_peaks: needs the mask net's boundary map")
        return masknet_peak_seeds(
            boundary,
            mask,
            resolution_nm,
            min_distance,
            boundary_threshold,
            min_boundary_distance,
            max_local_boundary,
            local_radius,
        )
    raise InputError(f"seeds.policy {policy!r}: choose one of {list(SEED_POLICIES)}")


def write_seeds_csv(path: str | Path, seeds_zyx: np.ndarray) -> None:
    """Write seeds (``(N, 3)`` z, y, x voxels) as CSV with header ``z,y,x``, atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["z", "y", "x"])
        writer.writerows(np.asarray(seeds_zyx, dtype=np.int64).reshape(-1, 3).tolist())


def read_seeds_csv(path: str | Path) -> np.ndarray:
    """Read a seed CSV (header ``z,y,x``) into an ``(N, 3)`` int64 array."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"seed file {path}: not found")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0]] != ["z", "y", "x"]:
        raise InputError(f"seed file {path}: first line must be the header 'z,y,x'")
    try:
        seeds = np.array([[int(v) for v in row] for row in rows[1:] if row], dtype=np.int64)
    except ValueError as exc:
        raise InputError(f"seed file {path}: non-integer coordinate ({exc})") from exc
    return seeds.reshape(-1, 3)
