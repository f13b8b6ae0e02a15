"""Training targets of the mask net, derived from ground truth (arrays z, y, x)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 6-connected (face) neighbourhood: "one voxel" in every rule here.
FACES = ndimage.generate_binary_structure(3, 1)


def label_interfaces(labels: np.ndarray) -> np.ndarray:
    """Voxels (bool) with a 6-neighbour of another label; label 0 never counts on either side."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        touch = (la != lb) & (la != 0) & (lb != 0)
        out[tuple(a)] |= touch
        out[tuple(b)] |= touch
    return out


def boundary_target(labels: np.ndarray) -> np.ndarray:
    """Ground-truth boundary (bool, z, y, x): label interfaces dilated by one voxel (6-conn.).

    Near the array edge the interfaces outside the array are unknown; pass labels with a
    margin of 2 voxels and crop when that matters.
    """
    return ndimage.binary_dilation(label_interfaces(labels), FACES)


def class_targets(
    annotation: np.ndarray | None, n_classes: int, shape: tuple[int, ...]
) -> np.ndarray:
    """One bool map per user class id 1..n_classes from a uint8 annotation (0 = none).

    Returns ``(n_classes, z, y, x)``; all False without an annotation.
    """
    out = np.zeros((n_classes, *shape), dtype=bool)
    if annotation is not None:
        for k in range(n_classes):
            out[k] = annotation == k + 1
    return out
