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

With ``--pairs`` (a run's ``agglomeration_pairs.csv``, scored on SEG.h5) it also shows what
the FFN itself can see: the oracle restricted to the one-neuron pairs whose two local FFN
runs overlap at all (best IoU over the pair's decision points >= t), and the pipeline's own
merges. Pairs that the local runs never join are beyond any threshold on the scores.

Usage: python benchmarks/agglomeration_oracle.py SEG.h5 GT.h5 [--gap 2] [--pairs CSV]
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
from ffnflow.resegmentation import (
    ResegmentationOptions,
    apply_merges,
    decision_points,
    read_scores_csv,
)
from ffnflow.stitch import UnionFind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("segmentation_h5")
    parser.add_argument("ground_truth_h5")
    parser.add_argument("--gap", type=float, default=2.0, help="label growth, voxels")
    parser.add_argument("--pairs", help="agglomeration_pairs.csv scored on SEG.h5")
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

    def merged(pairs) -> np.ndarray:
        uf = UnionFind()
        for a, b in pairs:
            uf.union(a, b)
        return apply_merges(seg, uf.representatives())

    def one_neuron(a: int, b: int) -> bool:
        return bool(majority[a]) and majority[a] == majority[b]

    rows = []
    for min_faces in (1, 25, 50):
        for min_voxels in (1000, 2000, 5000):
            examined = [(a, b) for a, b, f, s in pairs if f >= min_faces and s >= min_voxels]
            same = [(a, b) for a, b in examined if one_neuron(a, b)]
            m = score(merged(same))
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
    seen = []
    if args.pairs:
        scores = read_scores_csv(args.pairs)
        best_iou: dict[tuple[int, int], float] = {}
        for s in scores:
            best_iou[(s.a, s.b)] = max(best_iou.get((s.a, s.b), 0.0), s.iou)
        print(f"{args.pairs}: {len(scores)} decision points, {len(best_iou)} pairs")
        for t in (0.0, 0.01, 0.1, 0.25):
            joinable = [k for k, v in best_iou.items() if v >= t and one_neuron(*k)]
            name = f"one-neuron pairs with local-run IoU >= {t}"
            seen.append({"pairs": name, "n": len(joinable), **score(merged(joinable))})
        chosen = sorted({(s.a, s.b) for s in scores if s.merge})
        right = sum(one_neuron(a, b) for a, b in chosen)
        seen.append(
            {"pairs": f"the pipeline's merges ({right} one-neuron)", "n": len(chosen),
             **score(merged(chosen))}
        )  # fmt: skip
        for row in seen:
            row["vi_split_gain"] = round(base["vi_split"] - row["vi_split"], 4)
            row["vi_merge_change"] = round(row["vi_merge"] - base["vi_merge"], 4)
            print(json.dumps(row), flush=True)
    print(json.dumps({"segmentation": base, "oracle": rows, "scored_pairs": seen}))


if __name__ == "__main__":
    main()
