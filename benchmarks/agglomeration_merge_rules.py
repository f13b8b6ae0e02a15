"""Merge rules on already scored decision points: which groups to join, offline, in seconds.

Reads a run's scored pair table (``agglomeration_pairs.csv``, or a block's
``pair_scores.csv``), its ``cleaned.h5`` and the ground truth, and decides the merges of
the same scores under several rules with :func:`~ffnflow.resegmentation.merge_table`:
``large_segment_voxels`` (the workflow's guard against two large groups joined through a
small segment) and ``min_bridge_fraction`` (no join whose smaller segment holds less than
that fraction of the smaller group). No FFN runs: the local runs' scores are taken as
they are. Prints the oracle (every examined pair of one neuron merged: what a perfect
scorer of these points would gain) and, per rule, the merges, how many join two segments
of the same majority ground-truth object ("one neuron"), and the change of VI split /
merge (and with ``--erl`` of ERL along kimimaro skeletons of the ground truth) from
``cleaned.h5``.
``--halves AXIS`` also decides each rule on the decision points of each half of the
volume along AXIS (z, y or x) alone: a rule chosen on the whole table is only worth
keeping when it helps in both halves.

For choosing options: run it on training data only (on FIB-25, x 0-125 of
``fib25_s2_train.h5``; never x 125-250).

Usage: python benchmarks/agglomeration_merge_rules.py --cleaned RUN/cleaned.h5
    --pairs RUN/agglomeration_pairs.csv --ground-truth GT.h5 [--config CFG.yaml]
    [--erl [--erl-merge-min-nodes N]] [--halves z|y|x] [--out results.txt]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace

import fastremap
import h5py
import numpy as np

from ffnflow.config import load_config, validate_config
from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.resegmentation import apply_merges, merge_table, read_scores_csv
from ffnflow.run_length import segmentation_run_length, skeletonize
from ffnflow.stages.agglomerate import resegmentation_options
from ffnflow.stitch import UnionFind

LARGE_SEGMENT_VOXELS = (0, 10000, 20000, 50000)
MIN_BRIDGE_FRACTIONS = (0.0, 0.1, 0.25, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cleaned", required=True, help="the run's cleaned.h5")
    parser.add_argument("--pairs", required=True, help="agglomeration_pairs.csv")
    parser.add_argument("--ground-truth", required=True, help="HDF5 with labels, z, y, x")
    parser.add_argument("--config", help="the run's config (default: the workflow defaults)")
    parser.add_argument("--resolution-nm", type=float, nargs=3, default=(10.0, 10.0, 10.0))
    parser.add_argument("--erl", action="store_true", help="also ERL (skeletonises the GT)")
    parser.add_argument(
        "--erl-merge-min-nodes", type=int, default=1, help="evaluation.erl_merge_min_nodes"
    )
    parser.add_argument("--halves", choices=("z", "y", "x"), help="also per half along this axis")
    parser.add_argument("--out", help="write the table here too")
    args = parser.parse_args()

    config = load_config(args.config) if args.config else validate_config({"datasets": {}})
    options = resegmentation_options(config)
    scores = read_scores_csv(args.pairs)
    with h5py.File(args.cleaned, "r") as f:
        seg = f["labels"][...].astype(np.uint64)
    with h5py.File(args.ground_truth, "r") as f:
        gt = f["labels"][...].astype(np.uint64)
    ids, counts = fastremap.unique(seg, return_counts=True)
    voxels = {int(i): int(c) for i, c in zip(ids, counts) if i}
    majority = majority_objects(seg, gt)
    skeletons = skeletonize(gt, tuple(args.resolution_nm)) if args.erl else None

    def measure(labels: np.ndarray) -> dict[str, float]:
        m = segmentation_metrics(gt, labels)
        if skeletons is not None:
            m["erl_nm"] = segmentation_run_length(
                labels, skeletons, args.resolution_nm, args.erl_merge_min_nodes
            ).erl_nm
        return m

    base = measure(seg)
    subsets: list[tuple[str, list]] = [("all", scores)]
    if args.halves:
        axis = "zyx".index(args.halves)
        mid = seg.shape[axis] / 2
        coordinate = lambda s: (s.z, s.y, s.x)[axis]  # noqa: E731
        subsets += [
            (f"{args.halves}<{mid:g}", [s for s in scores if coordinate(s) < mid]),
            (f"{args.halves}>={mid:g}", [s for s in scores if coordinate(s) >= mid]),
        ]
    lines = [
        f"{len(scores)} scored decision points of {args.cleaned}; cleaned.h5: VI split / "
        f"merge {base['vi_split']:.3f} / {base['vi_merge']:.3f}"
        + (
            f", ERL {base['erl_nm']:.0f} nm (erl_merge_min_nodes {args.erl_merge_min_nodes})"
            if skeletons is not None
            else ""
        ),
        f"{'large_segment_voxels':>20} {'min_bridge':>10} {'merges':>6} {'one-neuron':>10} "
        f"{'dVI split':>9} {'dVI merge':>9}"
        + (f" {'dERL nm':>8}" if skeletons is not None else ""),
    ]
    rows, oracles = [], []
    for subset, points in subsets:
        # The oracle: every examined one-neuron pair merged, nothing else.
        one_neuron = {
            (s.a, s.b) for s in points if majority.get(s.a) and majority[s.a] == majority[s.b]
        }
        uf = UnionFind()
        for a, b in one_neuron:
            uf.union(a, b)
        m = measure(apply_merges(seg, uf.representatives()))
        oracle = {
            "points": subset,
            "oracle_pairs": len(one_neuron),
            "d_vi_split": round(m["vi_split"] - base["vi_split"], 4),
            "d_vi_merge": round(m["vi_merge"] - base["vi_merge"], 4),
        }
        if skeletons is not None:
            oracle["d_erl_nm"] = round(m["erl_nm"] - base["erl_nm"], 1)
        oracles.append(oracle)
        lines.append(
            f"{subset}: {len(points)} decision points; oracle (every one of its "
            f"{len(one_neuron)} one-neuron pairs merged): dVI split "
            f"{oracle['d_vi_split']:+.3f}, merge {oracle['d_vi_merge']:+.3f}"
            + (f", dERL {oracle['d_erl_nm']:+.1f} nm" if skeletons is not None else "")
        )
        for large, fraction in itertools.product(LARGE_SEGMENT_VOXELS, MIN_BRIDGE_FRACTIONS):
            opts = replace(options, large_segment_voxels=large, min_bridge_fraction=fraction)
            table, decided = merge_table(points, opts, voxels)
            merged = {(s.a, s.b) for s in decided if s.merge}
            same = sum(1 for a, b in merged if majority.get(a) and majority[a] == majority[b])
            m = measure(apply_merges(seg, table))
            row = {
                "points": subset,
                "large_segment_voxels": large,
                "min_bridge_fraction": fraction,
                "merges": len(merged),
                "one_neuron": same,
                "d_vi_split": round(m["vi_split"] - base["vi_split"], 4),
                "d_vi_merge": round(m["vi_merge"] - base["vi_merge"], 4),
            }
            if skeletons is not None:
                row["d_erl_nm"] = round(m["erl_nm"] - base["erl_nm"], 1)
            rows.append(row)
            pipeline = (
                subset == "all"
                and large == options.large_segment_voxels
                and fraction == options.min_bridge_fraction
            )
            lines.append(
                f"{large:>20d} {fraction:>10.2f} {len(merged):>6d} {same:>10d} "
                f"{row['d_vi_split']:>+9.3f} {row['d_vi_merge']:>+9.3f}"
                + (f" {row['d_erl_nm']:>+8.1f}" if skeletons is not None else "")
                + ("  (the pipeline)" if pipeline else "")
            )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    summary = {"base": {k: base[k] for k in ("vi_split", "vi_merge")}, "oracle": oracles}
    print(json.dumps({**summary, "rules": rows}))


if __name__ == "__main__":
    main()
