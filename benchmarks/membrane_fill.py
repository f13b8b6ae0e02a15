"""What the membrane fill gains and costs: VI, adapted Rand error and ERL, by distance.

The FFN leaves the membranes between cells unlabelled, while FIB-25's ground truth gives
every membrane voxel to a cell; those voxels count as split (and merge) error. For a
segmentation (e.g. a run's ``agglomerated.h5``) this prints, for each maximal distance,
the metrics after :func:`ffnflow.agglomerate.fill_membranes` (a seeded watershed of the
raw image) and, for comparison, after growing every segment by that distance into
unlabelled voxels (nearest segment, ``skimage.segmentation.expand_labels``). This is how
``agglomeration.membrane_fill.max_distance_voxels`` was chosen, on FIB-25 x 0-125 (never
on x 125-250). ERL (expected run length along kimimaro skeletons of the ground truth, the
evaluation's defaults) shows the cost: thin neurites the FFN left unsegmented lie in the
unlabelled voxels, the fill gives them to a neighbour, and that segment counts as merged.

Usage: python benchmarks/membrane_fill.py SEG.h5 DATA.h5 [--distances 1 2 3 4 5]
(SEG.h5 holds ``labels``; DATA.h5 holds ``raw`` and ground-truth ``labels``, z, y, x, the
same shape). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import h5py
import numpy as np
from skimage.segmentation import expand_labels

from ffnflow.agglomerate import fill_membranes
from ffnflow.metrics import segmentation_metrics
from ffnflow.run_length import segmentation_run_length, skeletonize

RESOLUTION_NM = (10.0, 10.0, 10.0)  # FIB-25


def line(m: dict[str, float]) -> str:
    """One table row: VI split, VI merge, ARAND, labelled fraction, ERL, ERL merges."""
    return (
        f"{m['vi_split']:8.3f} {m['vi_merge']:8.3f} {m['arand']:6.3f} "
        f"{m['fraction_segmented']:8.3f} {m['erl_nm']:6.0f} {m['erl_merges']:10.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("segmentation_h5")
    parser.add_argument("data_h5", help="raw and ground-truth labels")
    parser.add_argument("--distances", type=float, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--membrane", choices=("dark", "bright"), default="dark")
    args = parser.parse_args()
    with h5py.File(args.segmentation_h5, "r") as f:
        seg = f["labels"][...].astype(np.uint64)
    with h5py.File(args.data_h5, "r") as f:
        raw = f["raw"][...]
        gt = f["labels"][...].astype(np.uint64)

    skeletons = skeletonize(gt, RESOLUTION_NM)

    def score(labels: np.ndarray) -> dict[str, float]:
        m = segmentation_metrics(gt, labels)
        m.update(segmentation_run_length(labels, skeletons, RESOLUTION_NM).as_dict())
        keys = ("vi_split", "vi_merge", "arand", "fraction_segmented", "erl_nm", "erl_merges")
        return {k: round(m[k], 4) for k in keys}

    base = score(seg)
    print(f"{'':28s} VI split VI merge  ARAND labelled ERL nm ERL merges")
    print(f"{'segmentation':28s} {line(base)}")
    rows = []
    for distance in args.distances:
        t0 = time.perf_counter()
        filled, n = fill_membranes(seg, raw, distance, args.membrane)
        seconds = time.perf_counter() - t0
        for method, labels in (("watershed", filled), ("nearest", expand_labels(seg, distance))):
            m = score(labels)
            row = {"method": method, "max_distance_voxels": distance, **m}
            if method == "watershed":
                row.update(voxels_filled=n, seconds=round(seconds, 2))
            rows.append(row)
            print(f"{method + f' within {distance:g}':28s} {line(m)}", flush=True)
    print(json.dumps({"segmentation": base, "fills": rows}))


if __name__ == "__main__":
    main()
