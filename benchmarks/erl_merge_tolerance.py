"""How much of a segmentation's ERL loss is stray skeleton tips: ERL by merge tolerance.

For a segmentation and its ground truth, skeletonises the ground truth (kimimaro, the
evaluation's defaults) and prints ERL, merging segments and merges for several values of
``evaluation.erl_merge_min_nodes`` (a segment merges two skeletons only where it holds at
least that many nodes of each; 1 is funlib's definition). It also prints where the
"minority" nodes lie (nodes in a segment that mostly holds another skeleton): their
distance to the ground-truth object's boundary, in voxels. Skeletons of dense ground truth
end on the object's boundary, so a segment that takes a membrane voxel from its neighbour
can take a skeleton tip with it.

Usage: python benchmarks/erl_merge_tolerance.py SEG.h5 GT.h5 [--resolution-nm 10 10 10]
    [--tolerances 1 2 3 4 6 11 21]
(both files hold ``labels``, z, y, x, the same shape). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import edt
import h5py
import numpy as np

from ffnflow.run_length import expected_run_length, node_segments, skeletonize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("segmentation_h5")
    parser.add_argument("ground_truth_h5")
    parser.add_argument("--resolution-nm", type=float, nargs=3, default=(10.0, 10.0, 10.0))
    parser.add_argument("--tolerances", type=int, nargs="+", default=[1, 2, 3, 4, 6, 11, 21])
    args = parser.parse_args()
    resolution = tuple(args.resolution_nm)
    with h5py.File(args.segmentation_h5, "r") as f:
        seg = f["labels"][...].astype(np.uint64)
    with h5py.File(args.ground_truth_h5, "r") as f:
        gt = f["labels"][...].astype(np.uint64)
    skeletons = skeletonize(gt, resolution)
    segments = node_segments(skeletons, seg, resolution)
    spacing = np.concatenate([s.edge_lengths_nm() for s in skeletons.values()])

    rows = []
    print(f"{len(skeletons)} skeletons, median node spacing {np.median(spacing):.1f} nm")
    print(f"{'min nodes':>9} {'ERL nm':>8} {'merging segments':>16} {'merges':>6}")
    for n in args.tolerances:
        r = expected_run_length(skeletons, segments, merge_min_nodes=n)
        rows.append(
            {
                "merge_min_nodes": n,
                "erl_nm": round(r.erl_nm, 1),
                "merging_segments": len(r.merging_segments),
                "merges": r.n_merges,
            }
        )
        print(f"{n:>9d} {r.erl_nm:>8.0f} {len(r.merging_segments):>16d} {r.n_merges:>6d}")

    # Minority nodes: in a segment whose most nodes belong to another skeleton.
    counts: Counter[tuple[int, int]] = Counter()
    for key, segs in segments.items():
        for s, c in zip(*np.unique(segs, return_counts=True)):
            if s:
                counts[(int(s), key)] += int(c)
    majority: dict[int, tuple[int, int]] = {}
    for (s, key), c in counts.items():
        if c > majority.get(s, (0, -1))[0]:
            majority[s] = (c, key)
    depth = edt.edt(np.ascontiguousarray(gt.astype(np.uint32)), black_border=False)
    upper = np.asarray(gt.shape) - 1
    depths = []
    for key, segs in segments.items():
        ids = np.unique(segs)
        minority = np.array([s != 0 and majority[int(s)][1] != key for s in ids])
        stray = minority[np.searchsorted(ids, segs)]
        idx = np.clip(
            np.rint(skeletons[key].vertices_nm / np.asarray(resolution)).astype(np.int64), 0, upper
        )[stray]
        depths.extend(depth[idx[:, 0], idx[:, 1], idx[:, 2]].tolist())
    minority_pairs = [c for (s, key), c in counts.items() if majority[s][1] != key]
    q = np.percentile(depths, [25, 50, 75, 90]).round(1).tolist() if depths else []
    print(
        f"minority nodes: {len(depths)} in {len(minority_pairs)} (segment, skeleton) pairs, "
        f"{sum(c == 1 for c in minority_pairs)} of them a single node; depth inside their "
        f"ground-truth object (voxels) quartiles and 90th percentile: {q}"
    )
    print(
        json.dumps(
            {
                "tolerances": rows,
                "minority_nodes": len(depths),
                "minority_pairs": len(minority_pairs),
                "minority_depth_quantiles": q,
            }
        )
    )


if __name__ == "__main__":
    main()
