"""Stage 4, resegmentation scoring: each decision point scored by local FFN runs.

Files (results/NAME/blocks/BLOCK/): ``pair_scores.csv``, the decision points inside the
block's write ROI (from ``decision_points.csv``), each scored by
:func:`~ffnflow.resegmentation.score_pair` on the cleaned labels. While a block is scored,
``pair_scores.csv.partial`` holds the points scored so far, so that a killed job resumes
where it stopped (:class:`ScoreCheckpoint`). The only agglomeration
step that runs the FFN (and imports torch); merging the scored pairs is
:func:`ffnflow.stages.agglomerate.run_agglomerate`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.config import MERGE_DECISION_KEYS, dataset_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import InferenceOptions
from ffnflow.ffn.predictor import resolve_device
from ffnflow.resegmentation import (
    DecisionPoint,
    PairScore,
    ResegmentationOptions,
    passes_merge_thresholds,
    read_points_csv,
    read_whole_score_rows,
    score_pair,
    write_scores_csv,
)
from ffnflow.stages.agglomerate import resegmentation_options
from ffnflow.stages.common import check_roi_normalisation, dataset_block, ffn_inputs
from ffnflow.stages.segment import (
    border_padding,
    load_ffn,
    make_predictor,
    pad_volume_border,
)
from ffnflow.volumes import Roi, open_volume

log = logging.getLogger("ffnflow")


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


PointKey = tuple[int, int, int, int, int]


def point_key(point: DecisionPoint) -> PointKey:
    """A decision point's identity: its pair (a, b) and position (z, y, x)."""
    return (point.a, point.b, point.z, point.y, point.x)


def scoring_fingerprint(
    config: dict[str, Any],
    dataset_name: str,
    cleaned_h5: str | Path,
    mask_h5: str | Path | None,
) -> str:
    """A digest of what a block's scores depend on: the FFN and dataset config, the
    resegmentation options other than the merge thresholds, and the size and modification
    time of the cleaned labels, the mask net output and the FFN checkpoint."""
    reseg = config["agglomeration"]["resegmentation"]
    files = {}
    for name, path in (
        ("cleaned", cleaned_h5),
        ("mask", mask_h5),
        ("checkpoint", config["ffn"]["checkpoint"]),
    ):
        if path is not None and Path(path).is_file():
            stat = Path(path).stat()
            files[name] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    payload = {
        "ffn": config["ffn"],
        "dataset": config["datasets"][dataset_name],
        "resegmentation": {k: v for k, v in reseg.items() if k not in MERGE_DECISION_KEYS},
        "files": files,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ScoreCheckpoint:
    """The decision points of one block scored so far: ``SCORES.partial`` beside the block's
    scores CSV, one row appended (and synced to disk) per scored point.

    Its first line holds the inputs' :func:`scoring_fingerprint`; a checkpoint of other
    inputs, or its unreadable rows (a row cut off by a kill), are not used.
    """

    HEADER = "# ffnflow pair scores checkpoint "

    def __init__(self, scores_csv: str | Path, fingerprint: str) -> None:
        scores_csv = Path(scores_csv)
        self.path = scores_csv.with_name(scores_csv.name + ".partial")
        self.fingerprint = fingerprint
        self.columns = [f.name for f in fields(PairScore)]

    def load(self, options: ResegmentationOptions) -> dict[PointKey, PairScore]:
        """The scores of an earlier, killed run of the same inputs (``merge`` decided by
        ``options``); empty when there is none."""
        if not self.path.is_file():
            return {}
        with open(self.path, newline="") as f:
            if f.readline().rstrip("\n") != self.HEADER + self.fingerprint:
                log.info("%s: from other inputs, not used", self.path)
                return {}
            scores = read_whole_score_rows(f)
        return {
            point_key(s): replace(
                s,
                merge=passes_merge_thresholds(
                    s.iou, s.consistency_a, s.consistency_b, s.deleted, options
                ),
            )
            for s in scores
        }

    def start(self, done: dict[PointKey, PairScore]) -> None:
        """Rewrite the checkpoint with the scores in ``done`` (whole rows only)."""
        with open(self.path, "w", newline="") as f:
            f.write(self.HEADER + self.fingerprint + "\n")
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(asdict(s) for s in done.values())

    def append(self, score: PairScore) -> None:
        """Add one scored point, on disk before this returns."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(asdict(score))
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
    A killed run's scored points are kept in a :class:`ScoreCheckpoint` and not scored again.
    """
    dataset = dataset_config(config, dataset_name)
    block = dataset_block(config, dataset, block_id)
    check_roi_normalisation(dataset, block.read_roi, f"block {block_id}")
    points = [p for p in read_points_csv(points_csv) if block.write_roi.contains(p.point)]
    checkpoint = ScoreCheckpoint(
        scores_csv, scoring_fingerprint(config, dataset_name, cleaned_h5, mask_h5)
    )
    wanted = {point_key(p) for p in points}
    done = {k: s for k, s in checkpoint.load(resegmentation_options(config)).items() if k in wanted}
    if done:
        log.info(
            "block %s: resuming, %d of %d decision points scored before (%s)",
            block_id,
            len(done),
            len(points),
            checkpoint.path,
        )
    checkpoint.start(done)
    todo = [p for p in points if point_key(p) not in done]
    processes = min(scoring_processes(config, threads), max(len(todo), 1))
    t0 = time.perf_counter()
    resumed = len(done)

    def report(score: PairScore) -> None:
        done[point_key(score)] = score
        checkpoint.append(score)
        per_min = (len(done) - resumed) / max(time.perf_counter() - t0, 1e-9) * 60.0
        log.info(
            "point %d/%d, pair (%d, %d): IoU %.2f, consistency %.2f/%.2f, deleted %.2f, %d FOVs "
            "-> %s (%.1f points/min, about %.0f min left)",
            len(done),
            len(points),
            score.a,
            score.b,
            score.iou,
            score.consistency_a,
            score.consistency_b,
            score.deleted,
            score.fov_evaluations,
            "passes" if score.merge else "fails",
            per_min,
            (len(points) - len(done)) / max(per_min, 1e-9),
        )

    if todo and processes <= 1:
        scorer = PairScorer(config, dataset_name, cleaned_h5, threads, mask_h5)
        for point in todo:
            report(scorer.score(point))
    elif todo:
        log.info("scoring %d decision points in %d single-threaded processes", len(todo), processes)
        context = multiprocessing.get_context("spawn")  # no fork of torch's thread pools
        initargs = (config, dataset_name, str(cleaned_h5), 1, mask_h5)
        try:
            with ProcessPoolExecutor(processes, context, _start_worker, initargs) as pool:
                for score in pool.map(_score_in_worker, todo):
                    report(score)
        except BrokenProcessPool as exc:
            raise InputError(
                "score_pairs: a scoring process died (out of memory, or the calling script "
                "lacks an 'if __name__ == \"__main__\":' guard, which spawned processes "
                f"need): {exc}"
            ) from exc
    scores = [done[point_key(p)] for p in points]
    write_scores_csv(scores_csv, scores)
    checkpoint.remove()
    log.info(
        "block %s: %d decision points scored, %d pass the merge thresholds, %d FOVs in %.1f s",
        block_id,
        len(scores),
        sum(s.merge for s in scores),
        sum(s.fov_evaluations for s in scores),
        time.perf_counter() - t0,
    )
    return scores
