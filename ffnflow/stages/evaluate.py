"""Stage: evaluation of a segmentation against the dataset's ground-truth labels."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ffnflow.atomic import write_json_atomic
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.metrics import segmentation_metrics
from ffnflow.volumes import read_volume

log = logging.getLogger("ffnflow")


def run_evaluate(
    config: dict[str, Any], dataset_name: str, segmentation: str, metrics_json: str | Path
) -> dict[str, float]:
    """Compare a segmentation volume spec with the dataset's labels; write metrics JSON."""
    dataset = dataset_config(config, dataset_name)
    if dataset.labels is None:
        raise InputError(f"datasets.{dataset_name}.labels: not configured, nothing to evaluate")
    labels = read_volume(dataset.labels)
    seg = read_volume(segmentation)
    if labels.shape != seg.shape:
        raise InputError(
            f"labels {dataset.labels} shape {labels.shape} != segmentation {segmentation} "
            f"shape {seg.shape}"
        )
    metrics = segmentation_metrics(labels, seg)
    write_json_atomic(metrics_json, metrics)
    log.info("metrics for %s: %s", dataset_name, json.dumps(metrics))
    return metrics
