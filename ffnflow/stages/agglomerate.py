"""Stage 4: consensus and clean-up of the FFN pass, then resegmentation agglomeration.

Files (results/NAME/): ``cleaned.h5`` (consensus of ``ffn.h5`` and ``ffn_reverse.h5`` when
enabled, then clean-up), ``decision_points.csv``, ``agglomerated.h5`` with
``agglomeration_pairs.csv`` (the per-block ``pair_scores.csv`` merged by the thresholds;
the scoring itself, by local FFN runs, is :mod:`ffnflow.stages.score_pairs`), then
``filled.h5`` (the membranes left unlabelled between segments given to a neighbour).
Clean-up, decision points and the membrane fill hold the whole volume in memory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import fastremap
import numpy as np

from ffnflow.agglomerate import CleanupOptions, clean_up, fill_membranes, intersection_consensus
from ffnflow.atomic import write_json_atomic
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.resegmentation import (
    ResegmentationOptions,
    apply_merges,
    decision_points,
    merge_table,
    passes_merge_thresholds,
    read_scores_csv,
    write_points_csv,
    write_scores_csv,
)
from ffnflow.stages.common import read_movement_mask, read_raw
from ffnflow.volumes import read_volume, write_volume

log = logging.getLogger("ffnflow")


def resegmentation_options(config: dict[str, Any]) -> ResegmentationOptions:
    """The ``agglomeration.resegmentation`` config as options."""
    cfg = {k: v for k, v in config["agglomeration"]["resegmentation"].items() if k != "enabled"}
    return ResegmentationOptions(**cfg)


def _write_labels(path: str | Path, labels: np.ndarray, resolution_nm, **attrs: Any) -> None:
    write_volume(f"{path}:labels", labels, resolution_nm, "segmentation", attrs=attrs)


def run_clean_up(
    config: dict[str, Any],
    dataset_name: str,
    ffn_h5: str | Path,
    out_h5: str | Path,
    counters_json: str | Path,
    reverse_h5: str | Path | None = None,
    mask_h5: str | Path | None = None,
) -> dict[str, Any]:
    """Consensus (when ``reverse_h5`` is given) and clean-up of the stitched FFN pass."""
    dataset = dataset_config(config, dataset_name)
    labels = read_volume(f"{ffn_h5}:labels")
    counters: dict[str, Any] = {}
    cleanup = CleanupOptions(**config["agglomeration"]["cleanup"])
    if reverse_h5 is not None:
        reverse = read_volume(f"{reverse_h5}:labels")
        if reverse.shape != labels.shape:
            raise InputError(
                f"consensus: {reverse_h5} shape {reverse.shape} != {ffn_h5} shape {labels.shape}"
            )
        labels = intersection_consensus(labels, reverse, cleanup.min_segment_voxels)
        counters["consensus_segments"] = int(labels.max(initial=0))
    excluded = read_movement_mask(config, dataset, None, mask_h5)
    cleaned, clean_counters = clean_up(labels, cleanup, excluded)
    counters.update(clean_counters)
    counters["fraction_segmented"] = float(np.count_nonzero(cleaned) / cleaned.size)
    _write_labels(out_h5, cleaned, dataset.resolution_nm, counters=json.dumps(counters))
    write_json_atomic(counters_json, counters)
    log.info("clean-up of %s: %s", dataset_name, json.dumps(counters))
    return counters


def run_fill_membranes(
    config: dict[str, Any],
    dataset_name: str,
    labels_h5: str | Path,
    out_h5: str | Path,
    counters_json: str | Path,
    mask_h5: str | Path | None = None,
) -> dict[str, Any]:
    """Give the unlabelled voxels near segments to a neighbour (``agglomeration.
    membrane_fill``), never across the dataset mask or the mask net's exclusions."""
    dataset = dataset_config(config, dataset_name)
    options = config["agglomeration"]["membrane_fill"]
    labels = read_volume(f"{labels_h5}:labels")
    raw = read_raw(dataset)
    if raw.shape != labels.shape:
        raise InputError(
            f"membrane fill: {labels_h5} shape {labels.shape} != raw {dataset.raw} "
            f"shape {raw.shape}"
        )
    excluded = read_movement_mask(config, dataset, None, mask_h5)
    t0 = time.perf_counter()
    filled, n_filled = fill_membranes(
        labels, raw, options["max_distance_voxels"], options["membrane"], excluded
    )
    counters = {
        "voxels_filled": n_filled,
        "fraction_segmented_before": float(np.count_nonzero(labels) / labels.size),
        "fraction_segmented": float(np.count_nonzero(filled) / filled.size),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_labels(out_h5, filled, dataset.resolution_nm, counters=json.dumps(counters))
    write_json_atomic(counters_json, counters)
    log.info("membrane fill of %s: %s", dataset_name, json.dumps(counters))
    return counters


def run_find_decision_points(
    config: dict[str, Any], dataset_name: str, cleaned_h5: str | Path, points_csv: str | Path
) -> int:
    """Decision points of every touching pair of segments; returns how many."""
    dataset = dataset_config(config, dataset_name)
    t0 = time.perf_counter()
    labels = read_volume(f"{cleaned_h5}:labels")
    points = decision_points(labels, resegmentation_options(config), dataset.resolution_nm)
    write_points_csv(points_csv, points)
    log.info(
        "%s: %d decision points in %.1f s", dataset_name, len(points), time.perf_counter() - t0
    )
    return len(points)


def run_agglomerate(
    config: dict[str, Any],
    dataset_name: str,
    cleaned_h5: str | Path,
    score_files: list[str | Path],
    out_h5: str | Path,
    pairs_csv: str | Path,
    counters_json: str | Path,
) -> dict[str, Any]:
    """Merge the pairs the local runs agree on; write the merged labels and all pairs.

    The merge decisions are taken here from the scores and the ``agglomeration.
    resegmentation`` thresholds (:func:`~ffnflow.resegmentation.merge_table`), so changing
    a threshold reruns only this step. ``pairs_csv`` has one row per decision point;
    ``merge`` says whether that point merged its pair.
    """
    dataset = dataset_config(config, dataset_name)
    options = resegmentation_options(config)
    scores = sorted((s for f in score_files for s in read_scores_csv(f)), key=lambda s: (s.a, s.b))
    labels = read_volume(f"{cleaned_h5}:labels")
    ids, counts = fastremap.unique(labels, return_counts=True)
    voxels = {int(i): int(c) for i, c in zip(ids, counts) if i}
    table, decided = merge_table(scores, options, voxels)
    merged = apply_merges(labels, table)
    passing = sum(
        passes_merge_thresholds(s.iou, s.consistency_a, s.consistency_b, s.deleted, options)
        for s in scores
    )
    counters = {
        "pairs_examined": len({(s.a, s.b) for s in scores}),
        "decision_points": len(scores),
        "points_passing_thresholds": int(passing),
        "pairs_merged": len({(s.a, s.b) for s in decided if s.merge}),
        "segments_in": int(np.count_nonzero(np.unique(labels))),
        "segments_out": int(np.count_nonzero(np.unique(merged))),
        "fov_evaluations": int(sum(s.fov_evaluations for s in scores)),
        "seed_tries": int(sum(s.seed_tries for s in scores)),
    }
    write_scores_csv(pairs_csv, decided)
    _write_labels(out_h5, merged, dataset.resolution_nm, counters=json.dumps(counters))
    write_json_atomic(counters_json, counters)
    log.info("agglomeration of %s: %s", dataset_name, json.dumps(counters))
    return counters
