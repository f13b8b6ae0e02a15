"""Segmentation quality against ground truth: variation of information and adapted Rand.

Conventions (scikit-image): ``vi_split`` = H(segmentation | ground truth), the
over-segmentation term; ``vi_merge`` = H(ground truth | segmentation), the merge term; both
in bits. Ground-truth label 0 is ignored unless ``ignore_gt_zero`` is False.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information

from ffnflow.errors import InputError


def segmentation_metrics(
    ground_truth: np.ndarray, segmentation: np.ndarray, ignore_gt_zero: bool = True
) -> dict[str, float]:
    """VI split/merge, adapted Rand error, segment count and labelled fraction (z, y, x)."""
    if ground_truth.shape != segmentation.shape:
        raise InputError(
            f"evaluation: ground truth shape {ground_truth.shape} != segmentation shape "
            f"{segmentation.shape}"
        )
    gt = np.ascontiguousarray(ground_truth).astype(np.uint64, copy=False)
    seg = np.ascontiguousarray(segmentation).astype(np.uint64, copy=False)
    ignore = (0,) if ignore_gt_zero else ()
    split, merge = variation_of_information(gt, seg, ignore_labels=ignore)
    arand = adapted_rand_error(gt, seg, ignore_labels=ignore)[0]
    labels = np.unique(seg)
    return {
        "vi_split": float(split),
        "vi_merge": float(merge),
        "vi_sum": float(split + merge),
        "arand": float(arand),
        "n_segments": int(np.count_nonzero(labels)),
        "fraction_segmented": float(np.count_nonzero(seg) / seg.size),
    }
