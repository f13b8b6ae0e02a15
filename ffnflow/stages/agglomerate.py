"""Stage 4: consensus and clean-up of the FFN pass, then resegmentation agglomeration.

Files (results/NAME/): ``cleaned.h5`` (consensus of ``ffn.h5`` and ``ffn_reverse.h5`` when
enabled, then clean-up), ``decision_points.csv``, per block ``pair_scores.csv`` (the decision
points inside the block's write ROI, each scored by local FFN runs), and
``agglomerated.h5`` with ``agglomeration_pairs.csv``, then ``filled.h5`` (the membranes
left unlabelled between segments given to a neighbour). Clean-up, decision points and the
membrane fill hold the whole volume in memory; scoring reads one small box per decision
point.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastremap
import numpy as np

from ffnflow.agglomerate import CleanupOptions, clean_up, fill_membranes, intersection_consensus
from ffnflow.atomic import write_json_atomic
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import InferenceOptions
from ffnflow.ffn.predictor import resolve_device
from ffnflow.resegmentation import (
    DecisionPoint,
    PairScore,
    ResegmentationOptions,
    apply_merges,
    decision_points,
    merge_table,
    passes_merge_thresholds,
    read_points_csv,
    read_scores_csv,
    score_pair,
    write_points_csv,
    write_scores_csv,
)
from ffnflow.stages.common import (
    dataset_block,
    ffn_inputs,
    read_movement_mask,
    read_raw,
)
from ffnflow.stages.segment import (
    border_padding,
    load_ffn,
    make_predictor,
    pad_volume_border,
)
from ffnflow.volumes import Roi, open_volume, read_volume, write_volume

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


class PairScorer:
    """Scores decision points of one dataset: the FFN, the cleaned labels and the inputs
    (``threads``: torch threads; ``mask_h5``: the mask net output, when enabled)."""

    def __init__(
        self,
        config: dict[str, Any],
        dataset_name: str,
        cleaned_h5: str | Path,
        threads: int | None,
        mask_h5: str | Path | None,
    ) -> None:
        self.config = config
        self.dataset = dataset_config(config, dataset_name)
        self.options = resegmentation_options(config)
        loaded = load_ffn(config, self.dataset)
        self.predictor, _ = make_predictor(
            loaded.model, {**config["ffn"], "max_objects": 1}, threads
        )
        self.inference = InferenceOptions(**config["ffn"]["inference"])
        self.labels_volume = open_volume(f"{cleaned_h5}:labels")
        self.fov_size = loaded.model.arch.fov_size_zyx
        self.reach = np.asarray(self.options.radius_zyx) + np.asarray(self.fov_size) // 2
        self.mask_h5 = mask_h5

    def local_inputs(
        self, point: DecisionPoint
    ) -> tuple[np.ndarray, np.ndarray, DecisionPoint, np.ndarray | None]:
        """The normalised image, cleaned labels and movement mask (z, y, x) around
        ``point`` as the FFN stage saw them (volume border included), and the point in
        their coordinates."""
        shape = self.labels_volume.shape
        lo = np.maximum(np.asarray(point.point) - self.reach, 0)
        hi = np.minimum(np.asarray(point.point) + self.reach + 1, shape)
        roi = Roi(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))
        image, movement_mask = ffn_inputs(self.config, self.dataset, roi, self.mask_h5)
        labels = self.labels_volume.read(roi)
        if movement_mask is not None:
            labels = np.where(movement_mask, 0, labels)
        # The volume border as the FFN stage saw it (ffn.volume_border).
        pad = border_padding(roi, shape, self.fov_size, self.config["ffn"])
        shift = np.zeros(3, dtype=np.int64)
        if pad is not None:
            image, movement_mask = pad_volume_border(image, movement_mask, pad)
            labels = np.pad(labels, pad)
            shift = np.array([before for before, _ in pad])
        z, y, x = (int(v) for v in np.asarray(point.point) - lo + shift)
        return image, labels, replace(point, z=z, y=y, x=x), movement_mask

    def score(self, point: DecisionPoint) -> PairScore:
        """One decision point scored by :func:`~ffnflow.resegmentation.score_pair`."""
        image, labels, local, movement_mask = self.local_inputs(point)
        score = score_pair(
            image,
            labels,
            local,
            self.predictor,
            self.inference,
            self.options,
            movement_mask=movement_mask,
        )
        return replace(score, z=point.z, y=point.y, x=point.x)


_worker_scorer: PairScorer | None = None


def _start_worker(*args: Any) -> None:
    global _worker_scorer
    _worker_scorer = PairScorer(*args)


def _score_in_worker(point: DecisionPoint) -> PairScore:
    assert _worker_scorer is not None
    return _worker_scorer.score(point)


def scoring_processes(config: dict[str, Any], threads: int | None) -> int:
    """Worker processes for scoring on ``threads`` cores: one single-threaded process per
    core on the CPU (on FIB-25, two processes scored 23 decision points per minute, one
    process with two threads about 15: the local runs' small convolutions scale poorly
    across threads), else 1."""
    device = resolve_device(config["ffn"]["device"])
    return max(int(threads or 1), 1) if device.type == "cpu" else 1


def run_score_pairs(
    config: dict[str, Any],
    dataset_name: str,
    block_id: str,
    cleaned_h5: str | Path,
    points_csv: str | Path,
    scores_csv: str | Path,
    threads: int | None = None,
    mask_h5: str | Path | None = None,
) -> list[PairScore]:
    """Score the decision points inside one block's write ROI by local FFN runs.

    On the CPU with ``threads`` > 1 the points are scored in that many single-threaded
    processes (:func:`scoring_processes`); each pair's score does not depend on which.
    """
    dataset = dataset_config(config, dataset_name)
    block = dataset_block(config, dataset, block_id)
    points = [p for p in read_points_csv(points_csv) if block.write_roi.contains(p.point)]
    processes = min(scoring_processes(config, threads), max(len(points), 1))
    t0 = time.perf_counter()
    scores: list[PairScore] = []

    def report(score: PairScore) -> None:
        scores.append(score)
        log.info(
            "point %d/%d, pair (%d, %d): IoU %.2f, consistency %.2f/%.2f, deleted %.2f, %d FOVs -> %s",
            len(scores),
            len(points),
            score.a,
            score.b,
            score.iou,
            score.consistency_a,
            score.consistency_b,
            score.deleted,
            score.fov_evaluations,
            "passes" if score.merge else "fails",
        )

    if processes <= 1:
        scorer = PairScorer(config, dataset_name, cleaned_h5, threads, mask_h5)
        for point in points:
            report(scorer.score(point))
    else:
        log.info(
            "scoring %d decision points in %d single-threaded processes", len(points), processes
        )
        context = multiprocessing.get_context("spawn")  # no fork of torch's thread pools
        initargs = (config, dataset_name, str(cleaned_h5), 1, mask_h5)
        try:
            with ProcessPoolExecutor(processes, context, _start_worker, initargs) as pool:
                for score in pool.map(_score_in_worker, points):
                    report(score)
        except BrokenProcessPool as exc:
            raise InputError(
                "score_pairs: a scoring process died (out of memory, or the calling script "
                "lacks an 'if __name__ == \"__main__\":' guard, which spawned processes "
                f"need): {exc}"
            ) from exc
    write_scores_csv(scores_csv, scores)
    log.info(
        "block %s: %d decision points scored, %d pass the merge thresholds, %d FOVs in %.1f s",
        block_id,
        len(scores),
        sum(s.merge for s in scores),
        sum(s.fov_evaluations for s in scores),
        time.perf_counter() - t0,
    )
    return scores


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
