"""How much merging could gain: oracle merges of touching segments, by pruning limits.

For a segmentation (e.g. a run's ``cleaned.h5``) and its ground truth, every touching pair
of segments (labels grown by ``--gap`` voxels, as the resegmentation's decision points) is
listed with its contact size (voxel faces) and its smaller segment's size (voxels). Pairs
whose two segments have the same majority ground-truth object are "one neuron"; merging all
of them that pass a pruning limit (contact >= F faces, both segments >= S voxels) gives
the best VI split that a perfect scorer of the examined pairs could reach. Prints a table
over F and S, plus the effect of growing the labels into unlabelled voxels. This is how the
resegmentation's ``min_contact_faces`` / ``min_segment_voxels`` defaults were chosen, on
FIB-25 x 0-125 (never on x 125-250).

Usage: python benchmarks/agglomeration_oracle.py SEG.h5 GT.h5 [--gap 2]
(both files hold ``labels``, z, y, x, the same shape). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json

import fastremap
import h5py
import numpy as np
from skimage.segmentation import expand_labels

from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.resegmentation import ResegmentationOptions, decision_points
from ffnflow.stitch import UnionFind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("segmentation_h5")
    parser.add_argument("ground_truth_h5")
    parser.add_argument("--gap", type=float, default=2.0, help="label growth, voxels")
    args = parser.parse_args()
    with h5py.File(args.segmentation_h5, "r") as f:
        seg = f["labels"][...].astype(np.uint64)
    with h5py.File(args.ground_truth_h5, "r") as f:
        gt = f["labels"][...].astype(np.uint64)

    def score(labels: np.ndarray) -> dict[str, float]:
        m = segmentation_metrics(gt, labels)
        return {k: round(m[k], 4) for k in ("vi_split", "vi_merge", "arand", "n_segments")}

    base = score(seg)
    print("segmentation", base)
    for grow in (1, 2):
        print(
            f"labels grown by {grow} voxel(s) into unlabelled voxels",
            score(expand_labels(seg, grow)),
        )

    ids, counts = fastremap.unique(seg, return_counts=True)
    size = dict(zip(ids.tolist(), counts.tolist()))
    majority = majority_objects(seg, gt)  # 0: no labelled ground truth
    options = ResegmentationOptions(
        max_gap_voxels=args.gap, min_contact_faces=1, min_segment_voxels=0
    )
    pairs = [
        (p.a, p.b, p.contact_faces, min(size[p.a], size[p.b]))
        for p in decision_points(seg, options)
    ]
    print(f"touching pairs: {len(pairs)}")
    rows = []
    for min_faces in (1, 25, 50):
        for min_voxels in (1000, 2000, 5000):
            examined = [(a, b) for a, b, f, s in pairs if f >= min_faces and s >= min_voxels]
            same = [(a, b) for a, b in examined if majority[a] and majority[a] == majority[b]]
            uf = UnionFind()
            for a, b in same:
                uf.union(a, b)
            merged = seg.copy()
            table = {k: uf.find(k) for k in list(uf.parent)}
            if table:
                fastremap.remap(merged, table, preserve_missing_labels=True, in_place=True)
            m = score(merged)
            row = {
                "min_contact_faces": min_faces,
                "min_segment_voxels": min_voxels,
                "pairs": len(examined),
                "one_neuron_pairs": len(same),
                **m,
                "vi_split_gain": round(base["vi_split"] - m["vi_split"], 4),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"segmentation": base, "oracle": rows}))


if __name__ == "__main__":
    main()
