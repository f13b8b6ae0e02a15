"""Can any merge set lower VI split by 0.2 bits and raise ERL? An oracle bound.

For a segmentation before agglomeration (a run's ``cleaned.h5``) and its ground truth, the
candidate merges are the touching pairs of segments (labels grown by ``--gap`` voxels, as
the resegmentation's decision points; both segments >= ``--min-segment-voxels``) whose two
segments have the same majority ground-truth object: merges a perfect scorer would make.
Merging two segments of different objects only adds VI merge and ERL merges, so the best
any agglomeration can do lies within these. The script reports:

- *all*: every candidate merged (the VI split ceiling of merging);
- *ERL-clean*: only merges of segments that hold skeleton nodes of at most one and the same
  ground-truth object (no merge can then create an ERL merge);
- *best ERL with split gain >= min-gain*: the subset of the candidates with the highest
  ERL among those that gain ``--min-gain`` bits (:func:`best_merge_set`: every subset of
  each ground-truth object's candidates, combined over objects by a knapsack), scored as
  a whole. If its ERL is below the ERL before agglomeration, no agglomeration of this
  segmentation meets the criterion.

With ``--pairs`` (a run's ``agglomeration_pairs.csv``, scored on SEG.h5) it also applies
the pipeline's merge rule (:func:`~ffnflow.resegmentation.merge_table`) over a grid of its
thresholds and reports the settings that meet the criterion, the highest ERL and the
largest VI split gain with ERL up: what tuning the thresholds could reach.

ERL: :mod:`ffnflow.run_length` along kimimaro skeletons of the ground truth with the
evaluation's defaults (``--skeletons`` reads them from a pickle of
``{object id: Skeleton}`` instead). VI (bits, ground-truth label 0 ignored, segment label 0
counted, as the evaluation) is computed from the segment x object contingency table.

Usage: python benchmarks/agglomeration_erl_bound.py SEG.h5 GT.h5 [--resolution-nm Z Y X]
(both files hold ``labels``, z, y, x, the same shape). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
from collections.abc import Iterable, Mapping

import fastremap
import h5py
import numpy as np

from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.resegmentation import (
    ResegmentationOptions,
    decision_points,
    merge_table,
    read_scores_csv,
)
from ffnflow.run_length import Skeleton, expected_run_length, node_segments, skeletonize
from ffnflow.stitch import UnionFind


class ContingencyVI:
    """VI split / merge (bits) of merged segmentations from one contingency table."""

    def __init__(self, segmentation: np.ndarray, ground_truth: np.ndarray) -> None:
        keep = ground_truth > 0
        pairs = np.stack([segmentation[keep], ground_truth[keep]], axis=1)
        rows, counts = np.unique(pairs, axis=0, return_counts=True)
        self.seg = rows[:, 0]
        self.gt = rows[:, 1]
        self.counts = counts.astype(np.float64)
        self.total = float(counts.sum())
        self.h_gt = self._entropy(self.gt, self.counts)

    def _entropy(self, keys: np.ndarray, counts: np.ndarray) -> float:
        _, inverse = np.unique(keys, return_inverse=True, axis=0)
        p = np.bincount(inverse.ravel(), weights=counts) / self.total
        return float(-(p * np.log2(p)).sum())

    def __call__(self, relabel: Mapping[int, int]) -> tuple[float, float]:
        """(split, merge) = (H(segments | objects), H(objects | segments)) after ``relabel``."""
        seg = np.array([relabel.get(int(s), int(s)) for s in self.seg], dtype=np.uint64)
        joint = self._entropy(np.stack([seg, self.gt], axis=1), self.counts)
        return joint - self.h_gt, joint - self._entropy(seg, self.counts)


def union(pairs: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Segment -> representative after merging ``pairs``."""
    uf = UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    return uf.representatives()


def best_merge_set(
    candidates: list[tuple[int, int]],
    majority: Mapping[int, int],
    vi: ContingencyVI,
    erl,
    base_split: float,
    min_gain: float,
    max_edges_per_object: int = 14,
) -> list[tuple[int, int]] | None:
    """The subset of ``candidates`` with the highest ERL among those that gain at least
    ``min_gain`` bits of VI split, or None when no subset does.

    Merges of different ground-truth objects barely interact, so every subset of each
    object's candidates is scored alone (gain, ERL change), its Pareto front kept, and the
    fronts combined by a knapsack over the gain (steps of 1e-4 bits); the caller scores the
    chosen set as a whole. An object with more than ``max_edges_per_object`` candidates is
    not enumerated: its candidates are then all merged or none.
    """
    by_object: dict[int, list[tuple[int, int]]] = {}
    for a, b in candidates:
        by_object.setdefault(majority[a], []).append((a, b))
    base_erl = erl({})
    step = 1e-4
    cap = int(round(2 * min_gain / step))
    best: dict[int, tuple[float, list]] = {0: (0.0, [])}
    for edges in by_object.values():
        if len(edges) <= max_edges_per_object:
            subsets = [
                sub for r in range(len(edges) + 1) for sub in itertools.combinations(edges, r)
            ]
        else:
            subsets = [(), tuple(edges)]
        scored = []
        for sub in subsets:
            relabel = union(sub)
            scored.append((base_split - vi(relabel)[0], erl(relabel) - base_erl, sub))
        front: list[tuple[float, float, tuple]] = []
        for gain, change, sub in sorted(scored, key=lambda x: (-x[0], -x[1])):
            if not front or change > front[-1][1] + 1e-9:
                front.append((gain, change, sub))
        combined: dict[int, tuple[float, list]] = {}
        for total, (value, chosen) in best.items():
            for gain, change, sub in front:
                key = min(cap, total + int(round(gain / step)))
                if key not in combined or value + change > combined[key][0]:
                    combined[key] = (value + change, chosen + list(sub))
        best = combined
    feasible = [v for k, v in best.items() if k * step >= min_gain]
    return max(feasible, key=lambda v: v[0])[1] if feasible else None


def threshold_sweep(
    pairs_csv: str | None,
    size: Mapping[int, int],
    majority: Mapping[int, int],
    vi: ContingencyVI,
    erl,
    base_split: float,
    base_merge: float,
    base_erl: float,
) -> dict | None:
    """The pipeline's merge rule on scored pairs over a grid of its thresholds."""
    if not pairs_csv:
        return None
    scores = read_scores_csv(pairs_csv)
    voxels = {k: v for k, v in size.items() if k}
    rows = []
    grid = itertools.product(
        (0.25, 0.4, 0.55, 0.7, 0.85),  # merge_iou
        (0.4, 0.6, 0.8),  # min_consistency
        (0.1, 0.03),  # max_deleted
        (20000, 5000, 50000, 0),  # large_segment_voxels
        (0.1, 0.0, 0.3),  # min_bridge_fraction
    )
    for iou, consistency, deleted, large, bridge in grid:
        options = ResegmentationOptions(
            merge_iou=iou,
            min_consistency=consistency,
            max_deleted=deleted,
            large_segment_voxels=large,
            min_bridge_fraction=bridge,
        )
        table, decided = merge_table(scores, options, voxels)
        split, merge = vi(table)
        merged = {(s.a, s.b) for s in decided if s.merge}
        rows.append(
            {
                "merge_iou": iou,
                "min_consistency": consistency,
                "max_deleted": deleted,
                "large_segment_voxels": large,
                "min_bridge_fraction": bridge,
                "pairs_merged": len(merged),
                "wrong_pairs": sum(
                    not (majority[a] and majority[a] == majority[b]) for a, b in merged
                ),
                "vi_split_gain": round(base_split - split, 4),
                "vi_merge_change": round(merge - base_merge, 4),
                "erl_nm": round(erl(table), 1),
            }
        )
    meeting = [
        r
        for r in rows
        if r["vi_split_gain"] >= 0.2 and r["vi_merge_change"] <= 0.05 and r["erl_nm"] > base_erl
    ]
    up = [r for r in rows if r["erl_nm"] > base_erl]
    out = {
        "settings": len(rows),
        "meeting_criterion": meeting,
        "defaults": rows[0],
        "highest_erl": max(rows, key=lambda r: (r["erl_nm"], r["vi_split_gain"])),
        "largest_gain_with_erl_up": max(up, key=lambda r: r["vi_split_gain"]) if up else None,
    }
    print(
        f"threshold sweep on {pairs_csv}: {len(rows)} settings, {len(meeting)} meet the criterion"
    )
    for key in ("defaults", "highest_erl", "largest_gain_with_erl_up"):
        print(f"  {key}: {json.dumps(out[key])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("segmentation_h5")
    parser.add_argument("ground_truth_h5")
    parser.add_argument("--resolution-nm", type=float, nargs=3, default=(10.0, 10.0, 10.0))
    parser.add_argument("--gap", type=float, default=2.0, help="label growth, voxels")
    parser.add_argument("--min-segment-voxels", type=int, default=1000)
    parser.add_argument("--min-gain", type=float, default=0.2, help="VI split gain, bits")
    parser.add_argument("--skeletons", help="pickle of {object id: Skeleton} (nm, z, y, x)")
    parser.add_argument("--pairs", help="agglomeration_pairs.csv scored on SEG.h5")
    args = parser.parse_args()
    res = tuple(args.resolution_nm)
    with h5py.File(args.segmentation_h5, "r") as f:
        seg = f["labels"][...].astype(np.uint64)
    with h5py.File(args.ground_truth_h5, "r") as f:
        gt = f["labels"][...].astype(np.uint64)

    t0 = time.perf_counter()
    if args.skeletons:
        with open(args.skeletons, "rb") as f:
            skeletons: dict[int, Skeleton] = pickle.load(f)
    else:
        skeletons = skeletonize(gt, res)
    print(f"{len(skeletons)} ground-truth skeletons ({time.perf_counter() - t0:.0f} s)")
    nodes = node_segments(skeletons, seg, res)
    vi = ContingencyVI(seg, gt)

    def erl(relabel: Mapping[int, int]) -> float:
        mapped = {
            k: np.array([relabel.get(int(s), int(s)) for s in v], dtype=np.uint64)
            for k, v in nodes.items()
        }
        return expected_run_length(skeletons, mapped).erl_nm

    base_split, base_merge = vi({})
    base_erl = erl({})
    check = segmentation_metrics(gt, seg)
    assert abs(check["vi_split"] - base_split) < 1e-6, (check, base_split)
    assert abs(check["vi_merge"] - base_merge) < 1e-6, (check, base_merge)

    def row(name: str, merges: list[tuple[int, int]]) -> dict:
        relabel = union(merges)
        split, merge = vi(relabel)
        out = {
            "merges": name,
            "n": len(merges),
            "vi_split_gain": round(base_split - split, 4),
            "vi_merge_change": round(merge - base_merge, 4),
            "erl_nm": round(erl(relabel), 1),
        }
        print(json.dumps(out), flush=True)
        return out

    ids, counts = fastremap.unique(seg, return_counts=True)
    size = dict(zip(ids.tolist(), counts.tolist()))
    majority = majority_objects(seg, gt)
    options = ResegmentationOptions(
        max_gap_voxels=args.gap, min_contact_faces=1, min_segment_voxels=0
    )
    candidates = [
        (p.a, p.b)
        for p in decision_points(seg, options)
        if min(size[p.a], size[p.b]) >= args.min_segment_voxels
        and majority[p.a]
        and majority[p.a] == majority[p.b]
    ]
    owners: dict[int, set[int]] = {}
    for key, segs in nodes.items():
        for s in np.unique(segs).tolist():
            if s:
                owners.setdefault(int(s), set()).add(key)
    clean = [
        (a, b)
        for a, b in candidates
        if len(owners.get(a, ())) <= 1
        and len(owners.get(b, ())) <= 1
        and (not owners.get(a) or not owners.get(b) or owners[a] == owners[b])
    ]
    print(
        json.dumps(
            {"before": {"vi_split": round(base_split, 4), "vi_merge": round(base_merge, 4),
                        "erl_nm": round(base_erl, 1)}}
        )
    )  # fmt: skip
    rows = [row("all", candidates), row("ERL-clean", clean)]

    best = None
    search = best_merge_set(candidates, majority, vi, erl, base_split, args.min_gain)
    if search is not None:
        best = row(f"best ERL with split gain >= {args.min_gain}", search)
    else:
        print(f"no merge set of the candidates gains {args.min_gain} bits of VI split")
    verdict = bool(best and best["erl_nm"] >= base_erl and best["vi_merge_change"] <= 0.05)
    print(f"criterion reachable: {verdict}")
    sweep = threshold_sweep(args.pairs, size, majority, vi, erl, base_split, base_merge, base_erl)
    print(
        json.dumps(
            {"before": {"vi_split": base_split, "vi_merge": base_merge, "erl_nm": base_erl},
             "candidates": len(candidates), "rows": rows, "search": best,
             "criterion_reached": verdict, "threshold_sweep": sweep}
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
