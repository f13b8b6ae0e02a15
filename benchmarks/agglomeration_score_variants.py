"""Would other readings of the local runs merge better? POM thresholds and contact boundaries.

For the decision points of a run (``pair_scores.csv`` or ``decision_points.csv`` of
``cleaned.h5``), re-runs the two local FFN runs of every point exactly as the
``score_pairs`` rule does (:class:`~ffnflow.stages.agglomerate.PairScorer`), then reads
them at several POM thresholds (:func:`~ffnflow.resegmentation.compare_runs`; the
pipeline reads them at the FFN's ``segment_threshold``). With ``--masknet`` it also
takes the mask net's mean boundary probability over each pair's contact faces (labels
grown as for the decision points; each face scores the larger probability of its two
voxels). Each variant's merges are decided by :func:`~ffnflow.resegmentation.merge_table`
(with its large-segment guard) and scored against the ground truth: merges, how many
join two segments of the same majority ground-truth object ("one neuron"), change of VI
split / merge from ``cleaned.h5``.

For choosing options: run it on training data only (on FIB-25, x 0-125 of
``fib25_s2_train.h5``; never x 125-250). Scoring runs in ``--processes`` single-threaded
processes (about 15-23 points per minute each pair of cores on FIB-25).

Usage: python benchmarks/agglomeration_score_variants.py --config CFG.yaml --dataset NAME
    --cleaned RUN/cleaned.h5 --points RUN/decision_points.csv --ground-truth GT.h5
    [--masknet models/masknet_fib25.pt --raw RAW.h5] [--out results.txt]
Run from the repository root (the config's relative checkpoint paths). Last line: JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import fastremap
import h5py
import numpy as np
from skimage.segmentation import expand_labels

from ffnflow.config import load_config
from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.resegmentation import (
    DecisionPoint,
    PairScore,
    apply_merges,
    compare_runs,
    contact_faces,
    merge_table,
    resegment_point,
)
from ffnflow.stages.agglomerate import resegmentation_options
from ffnflow.stages.score_pairs import PairScorer

THRESHOLDS = (0.6, 0.5, 0.4, 0.3, 0.2)
_scorer: PairScorer | None = None


def _start(config: dict, dataset: str, cleaned: str) -> None:
    global _scorer
    _scorer = PairScorer(config, dataset, cleaned, 1, None)


def _readings(point: DecisionPoint) -> list[PairScore]:
    """The point's runs read at every threshold of THRESHOLDS (``merge`` left False)."""
    assert _scorer is not None
    image, labels, local, mask = _scorer.local_inputs(point)
    runs = resegment_point(
        image, labels, local, _scorer.predictor, _scorer.inference, _scorer.options, mask
    )
    out = []
    for t in THRESHOLDS:
        agree = compare_runs(runs, t)
        out.append(
            PairScore(
                **asdict(point),
                iou=agree.iou,
                consistency_a=agree.consistency_a,
                consistency_b=agree.consistency_b,
                deleted=agree.deleted,
                seed_tries=runs.seed_tries,
                fov_evaluations=runs.fov_evaluations,
                merge=False,
            )
        )
    return out


def contact_boundary(
    labels: np.ndarray, boundary: np.ndarray, gap: float
) -> dict[tuple[int, int], float]:
    """Mean boundary probability over the contact faces of every touching pair (a < b)."""
    grown = expand_labels(labels, gap) if gap > 0 else labels
    pairs, first, second = contact_faces(grown)
    probs = np.maximum(boundary[tuple(first.T)], boundary[tuple(second.T)])
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=probs)
    counts = np.bincount(inverse.ravel())
    return {(int(a), int(b)): float(s / c) for (a, b), s, c in zip(uniq, sums, counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cleaned", required=True, help="the run's cleaned.h5")
    parser.add_argument("--points", required=True, help="decision_points.csv or pair_scores.csv")
    parser.add_argument("--ground-truth", required=True, help="HDF5 with labels, z, y, x")
    parser.add_argument("--masknet", help="mask net checkpoint: also score contact boundaries")
    parser.add_argument("--raw", help="HDF5 with raw, z, y, x (for --masknet)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="only the first N points (smoke)")
    parser.add_argument("--out", help="write the table here too")
    args = parser.parse_args()

    config = load_config(args.config)
    options = resegmentation_options(config)
    with open(args.points, newline="") as f:
        fields = ("a", "b", "z", "y", "x", "contact_faces")
        points = [DecisionPoint(**{k: int(row[k]) for k in fields}) for row in csv.DictReader(f)]
    points = points[: args.limit] if args.limit else points
    with h5py.File(args.cleaned, "r") as f:
        seg = f["labels"][...].astype(np.uint64)
    with h5py.File(args.ground_truth, "r") as f:
        gt = f["labels"][...].astype(np.uint64)

    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    initargs = (config, args.dataset, str(args.cleaned))
    with ProcessPoolExecutor(args.processes, context, _start, initargs) as pool:
        readings = list(pool.map(_readings, points))
    scoring_s = time.perf_counter() - t0

    ids, counts = fastremap.unique(seg, return_counts=True)
    voxels = {int(i): int(c) for i, c in zip(ids, counts) if i}
    majority = majority_objects(seg, gt)
    base = segmentation_metrics(gt, seg)
    lines = [
        f"{len(points)} decision points of {args.cleaned} ({args.dataset}), re-run in "
        f"{scoring_s:.0f} s; VI split / merge of cleaned.h5: {base['vi_split']:.3f} / "
        f"{base['vi_merge']:.3f}",
        f"{'variant':52s} merges  one-neuron  dVI split  dVI merge",
    ]
    results = {}

    def evaluate(name: str, scores: list[PairScore], opts=options) -> None:
        table, decided = merge_table(scores, opts, voxels)
        m = segmentation_metrics(gt, apply_merges(seg, table))
        merged = {(s.a, s.b) for s in decided if s.merge}
        same = sum(1 for a, b in merged if majority[a] and majority[a] == majority[b])
        row = {
            "merges": len(merged),
            "one_neuron": same,
            "d_vi_split": round(m["vi_split"] - base["vi_split"], 4),
            "d_vi_merge": round(m["vi_merge"] - base["vi_merge"], 4),
        }
        results[name] = row
        lines.append(
            f"{name:52s} {row['merges']:6d}  {same:10d}  {row['d_vi_split']:+9.3f}  "
            f"{row['d_vi_merge']:+9.3f}"
        )

    for k, t in enumerate(THRESHOLDS):
        for merge_iou in (options.merge_iou, 0.15):
            opts = replace(options, merge_iou=merge_iou)
            label = f"POM >= {t}, IoU >= {merge_iou}"
            evaluate(
                label + (" (the pipeline)" if k == 0 and merge_iou == options.merge_iou else ""),
                [r[k] for r in readings],
                opts,
            )

    if args.masknet:
        from ffnflow.masknet.model import load_masknet
        from ffnflow.masknet.prediction import predict_roi
        from ffnflow.volumes import Roi

        with h5py.File(args.raw, "r") as f:
            raw = f["raw"][...]
        net = load_masknet(args.masknet)
        prob = predict_roi(
            net.model,
            lambda r: raw[r.to_slices()],
            raw.shape,
            Roi((0, 0, 0), raw.shape),
            net.normalization,
        )
        mean_boundary = contact_boundary(
            seg, prob[list(net.classes).index("boundary")], options.max_gap_voxels
        )
        pipeline = [r[0] for r in readings]
        for level in (0.2, 0.25, 0.3, 0.35):
            # A point also passes when its contact looks like no membrane at all.
            scores = [
                replace(
                    s,
                    iou=max(s.iou, options.merge_iou),
                    consistency_a=max(s.consistency_a, options.min_consistency),
                    consistency_b=max(s.consistency_b, options.min_consistency),
                    deleted=min(s.deleted, options.max_deleted),
                )
                if mean_boundary.get((s.a, s.b), 1.0) <= level
                else s
                for s in pipeline
            ]
            evaluate(f"pipeline, or contact boundary mean <= {level}", scores)

    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({"points": len(points), "scoring_s": round(scoring_s, 1), **results}))


if __name__ == "__main__":
    main()
