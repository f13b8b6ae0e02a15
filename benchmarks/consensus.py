"""What the consensus of two FFN passes gains: clean-up alone against consensus + clean-up.

For a run's first FFN pass (``ffn.h5``) and its second pass with the seeds in reverse order
(``ffn_reverse.h5``, written when ``agglomeration.consensus`` is on), this prints VI split /
merge, adapted Rand error, the labelled fraction and ERL (kimimaro skeletons of the ground
truth, the evaluation's defaults) of:
- the clean-up of the first pass alone (the workflow's default ``cleaned.h5``);
- the consensus (:func:`ffnflow.agglomerate.intersection_consensus`) and clean-up;
and, for each, the oracle agglomeration at the resegmentation's pruning limits: every
touching pair (contact >= ``min_contact_faces`` faces, both segments >=
``min_segment_voxels``) whose two segments have the same majority ground-truth object
merged. The oracle is what a perfect scorer could reach from each starting point, so it
shows whether the consensus's extra splits are worth their cost.

Usage: python benchmarks/consensus.py FFN.h5 FFN_REVERSE.h5 GT.h5 [--config CFG.yaml]
(each file holds ``labels``, z, y, x, one shape). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np

from ffnflow.agglomerate import CleanupOptions, clean_up, intersection_consensus
from ffnflow.config import load_config, validate_config
from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.resegmentation import apply_merges, decision_points
from ffnflow.run_length import segmentation_run_length, skeletonize
from ffnflow.stages.agglomerate import resegmentation_options
from ffnflow.stitch import UnionFind

KEYS = ("vi_split", "vi_merge", "arand", "fraction_segmented", "n_segments", "erl_nm")


def read_labels(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["labels"][...].astype(np.uint64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first_h5", help="ffn.h5, the first pass")
    parser.add_argument("second_h5", help="ffn_reverse.h5, the pass with seeds reversed")
    parser.add_argument("ground_truth_h5")
    parser.add_argument("--config", help="the run's config (default: the workflow defaults)")
    parser.add_argument("--resolution-nm", type=float, nargs=3, default=(10.0, 10.0, 10.0))
    args = parser.parse_args()
    config = load_config(args.config) if args.config else validate_config({"datasets": {}})
    cleanup = CleanupOptions(**config["agglomeration"]["cleanup"])
    options = resegmentation_options(config)
    first, second = read_labels(args.first_h5), read_labels(args.second_h5)
    gt = read_labels(args.ground_truth_h5)
    skeletons = skeletonize(gt, tuple(args.resolution_nm))

    def measure(labels: np.ndarray) -> dict[str, float]:
        m = segmentation_metrics(gt, labels)
        m.update(segmentation_run_length(labels, skeletons, args.resolution_nm).as_dict())
        return {k: round(float(m[k]), 4) for k in KEYS}

    def oracle(labels: np.ndarray) -> dict[str, float]:
        majority = majority_objects(labels, gt)
        uf = UnionFind()
        points = decision_points(labels, options)
        pairs = {(p.a, p.b) for p in points}
        same = {(a, b) for a, b in pairs if majority[a] and majority[a] == majority[b]}
        for a, b in same:
            uf.union(a, b)
        merged = apply_merges(labels, uf.representatives())
        return {"pairs": len(pairs), "one_neuron_pairs": len(same), **measure(merged)}

    rows = {}
    for name, labels in (
        ("first pass", first),
        ("second pass (seeds reversed)", second),
        ("clean-up", clean_up(first, cleanup)[0]),
        (
            "consensus + clean-up",
            clean_up(intersection_consensus(first, second, cleanup.min_segment_voxels), cleanup)[0],
        ),
    ):
        rows[name] = measure(labels)
        if name in ("clean-up", "consensus + clean-up"):
            rows[name + " -> oracle agglomeration"] = oracle(labels)
    print(f"{'':44s} VI split VI merge  ARAND labelled segments  ERL nm")
    for name, m in rows.items():
        print(
            f"{name:44s} {m['vi_split']:8.3f} {m['vi_merge']:8.3f} {m['arand']:6.3f} "
            f"{m['fraction_segmented']:8.3f} {m['n_segments']:8.0f} {m['erl_nm']:7.0f}"
            + (f"  ({m['one_neuron_pairs']} of {m['pairs']} pairs)" if "pairs" in m else "")
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
