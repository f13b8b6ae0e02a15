"""Baselines that FFN segmentations are compared against (same seeds, no learning)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from ffnflow.errors import InputError


def seeded_watershed(
    image: np.ndarray,
    seeds_zyx: np.ndarray,
    sigma: float = 1.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Watershed of the Gaussian-smoothed image from the given seeds (labels uint64, z, y, x).

    ``image`` is the EM image (z, y, x; membranes dark, as in FIB-SEM), ``seeds_zyx`` an
    ``(N, 3)`` array of voxel positions (e.g. :func:`ffnflow.seeds.sobel_peak_seeds`); seed
    ``i`` grows segment ``i + 1`` over ``-gaussian(image, sigma)`` (``sigma`` in voxels), so
    basins meet on dark membranes. Voxels of ``mask`` (True = excluded) stay 0; every other
    voxel reachable from a seed is labelled.
    """
    if image.ndim != 3:
        raise InputError(f"watershed image: expected 3D z,y,x, got shape {image.shape}")
    seeds = np.asarray(seeds_zyx, dtype=np.int64).reshape(-1, 3)
    if len(seeds) and (np.any(seeds < 0) or np.any(seeds >= image.shape)):
        raise InputError(f"watershed seeds: positions outside the image of shape {image.shape}")
    markers = np.zeros(image.shape, dtype=np.int64)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma) if sigma > 0 else image
    labels = watershed(
        -np.asarray(smooth, dtype=np.float32), markers, mask=None if mask is None else ~mask
    )
    return labels.astype(np.uint64)
