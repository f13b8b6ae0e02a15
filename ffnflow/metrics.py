"""Segmentation quality against ground truth: variation of information and adapted Rand.

Conventions (scikit-image): ``vi_split`` = H(segmentation | ground truth), the
over-segmentation term; ``vi_merge`` = H(ground truth | segmentation), the merge term; both
in bits. Ground-truth label 0 is ignored unless ``ignore_gt_zero`` is False.
"""

from __future__ import annotations

import fastremap
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


def majority_objects(segmentation: np.ndarray, ground_truth: np.ndarray) -> dict[int, int]:
    """The ground-truth object holding most of each segment's voxels (z, y, x arrays of
    one shape): segment id -> object id, 0 for a segment with no labelled ground truth.
    Ties go to the smaller object id."""
    if ground_truth.shape != segmentation.shape:
        raise InputError(
            f"majority_objects: ground truth shape {ground_truth.shape} != segmentation "
            f"shape {segmentation.shape}"
        )
    seg = np.asarray(segmentation).ravel()
    gt = np.asarray(ground_truth).ravel()
    out = {int(s): 0 for s in fastremap.unique(seg) if s}
    both = (seg > 0) & (gt > 0)
    if not both.any():
        return out
    seg_index, seg_map = fastremap.renumber(seg[both], start=0)
    gt_index, gt_map = fastremap.renumber(gt[both], start=0)
    seg_ids = _ids_by_index(seg_map)
    gt_ids = _ids_by_index(gt_map)
    keys = seg_index.astype(np.int64) * len(gt_ids) + gt_index
    if len(seg_ids) * len(gt_ids) <= 10_000_000:  # a dense count table
        table = np.bincount(keys, minlength=len(seg_ids) * len(gt_ids))
        keys = np.flatnonzero(table)
        counts = table[keys]
    else:
        keys, counts = np.unique(keys, return_counts=True)
    s_of, g_of = keys // len(gt_ids), keys % len(gt_ids)
    # Largest count first, then smaller object id; the first row of each segment wins.
    order = np.lexsort((gt_ids[g_of], -counts, s_of))
    s_of, g_of = s_of[order], g_of[order]
    first = np.concatenate([[True], s_of[1:] != s_of[:-1]])
    for s, g in zip(seg_ids[s_of[first]], gt_ids[g_of[first]]):
        out[int(s)] = int(g)
    return out


def _ids_by_index(mapping: dict) -> np.ndarray:
    """fastremap.renumber's mapping (original id -> new index) as an array index -> id."""
    ids = np.zeros(len(mapping), dtype=np.uint64)
    for original, index in mapping.items():
        ids[int(index)] = int(original)
    return ids
