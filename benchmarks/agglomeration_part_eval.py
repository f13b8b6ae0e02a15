"""A run's stages on one part of the volume, with only that part's decision points merged.

Reads a run's ``ffn.h5``, ``cleaned.h5``, a scored pair table (``agglomeration_pairs.csv``,
a block's ``pair_scores.csv``, or the ``pair_scores.csv.partial`` checkpoint of a scoring
job still running) and the ground truth. It decides the merges of the decision points that
lie before ``--end`` along ``--axis`` with the workflow's merge rules, and prints VI split /
merge, adapted Rand error and ERL (kimimaro skeletons of the ground truth in that part) of
the FFN pass, the clean-up, the agglomeration and the oracle (every examined pair of one
majority ground-truth object merged), all cropped to that part. It lets two runs be
compared on a part whose points are all scored, before the rest is.

Usage: python benchmarks/agglomeration_part_eval.py RUN_RESULTS_DIR PAIRS.csv GT.h5
    [--axis y] [--end 125] [--config CFG.yaml]   (z, y, x; last line: one JSON object)
"""

from __future__ import annotations

import argparse
import json

import fastremap
import h5py
import numpy as np

from ffnflow.config import load_config, validate_config
from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.resegmentation import apply_merges, merge_table, read_whole_score_rows
from ffnflow.run_length import segmentation_run_length, skeletonize
from ffnflow.stages.agglomerate import resegmentation_options
from ffnflow.stitch import UnionFind

KEYS = ("vi_split", "vi_merge", "arand", "n_segments", "erl_nm", "erl_merges")


def read_labels(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["labels"][...].astype(np.uint64)


def read_scores(path: str) -> list:
    """Scored points of a pair table or a scoring checkpoint (its first line a comment; a
    row cut off by a kill is skipped)."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    return read_whole_score_rows(lines[1:] if lines and lines[0].startswith("#") else lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="results/NAME of a run")
    parser.add_argument("pairs", help="scored pair table or pair_scores.csv.partial")
    parser.add_argument("ground_truth_h5")
    parser.add_argument("--axis", choices=("z", "y", "x"), default="y")
    parser.add_argument("--end", type=int, default=125, help="the part: coordinate < END")
    parser.add_argument("--config", help="the run's config (default: the workflow defaults)")
    parser.add_argument("--resolution-nm", type=float, nargs=3, default=(10.0, 10.0, 10.0))
    args = parser.parse_args()
    config = load_config(args.config) if args.config else validate_config({"datasets": {}})
    options = resegmentation_options(config)
    axis = "zyx".index(args.axis)
    part = tuple(slice(0, args.end) if i == axis else slice(None) for i in range(3))
    ffn, seg = read_labels(f"{args.run}/ffn.h5"), read_labels(f"{args.run}/cleaned.h5")
    gt = read_labels(args.ground_truth_h5)
    points = [s for s in read_scores(args.pairs) if s.point[axis] < args.end]
    ids, counts = fastremap.unique(seg, return_counts=True)
    voxels = {int(i): int(c) for i, c in zip(ids, counts) if i}
    table, decided = merge_table(points, options, voxels)
    majority = majority_objects(seg, gt)
    uf = UnionFind()
    for s in points:
        if majority.get(s.a) and majority[s.a] == majority[s.b]:
            uf.union(s.a, s.b)
    stages = {
        "ffn": ffn,
        "cleaned": seg,
        "agglomerated": apply_merges(seg, table),
        "oracle": apply_merges(seg, uf.representatives()),
    }
    skeletons = skeletonize(gt[part], tuple(args.resolution_nm))
    out: dict = {
        "part": f"{args.axis} < {args.end}",
        "points": len(points),
        "merged_pairs": len({(s.a, s.b) for s in decided if s.merge}),
    }
    print(f"{out['part']}: {len(points)} decision points, {out['merged_pairs']} pairs merged")
    print(f"{'':14s} VI split VI merge  ARAND segments  ERL nm ERL merges")
    for name, labels in stages.items():
        m = segmentation_metrics(gt[part], labels[part])
        m.update(segmentation_run_length(labels[part], skeletons, args.resolution_nm).as_dict())
        out[name] = {k: round(float(m[k]), 4) for k in KEYS}
        print(
            f"{name:14s} {m['vi_split']:8.3f} {m['vi_merge']:8.3f} {m['arand']:6.3f} "
            f"{m['n_segments']:8.0f} {m['erl_nm']:7.0f} {m['erl_merges']:10.0f}",
            flush=True,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
