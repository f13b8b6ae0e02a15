"""Stage: evaluation of a segmentation, and of every stage before it, against ground truth.

Per segmentation: VI split/merge, adapted Rand error (:mod:`ffnflow.metrics`) and the
expected run length along kimimaro skeletons of the ground-truth objects
(:mod:`ffnflow.run_length`). The ground truth is skeletonised once per run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ffnflow.atomic import write_json_atomic
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.metrics import segmentation_metrics
from ffnflow.run_length import segmentation_run_length, skeletonize
from ffnflow.stages.common import open_dataset_volume
from ffnflow.volumes import read_volume

log = logging.getLogger("ffnflow")

# The segmentation stages of the workflow, in pipeline order (results/NAME/<stage>.h5).
STAGE_ORDER = ("ffn", "cleaned", "agglomerated", "filled")


def run_evaluate(
    config: dict[str, Any],
    dataset_name: str,
    segmentation: str,
    metrics_json: str | Path,
    stages: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the final segmentation (a volume spec) and each of ``stages`` (name -> spec).

    The JSON holds the final figures at the top level (``vi_split``, ``vi_merge``,
    ``arand``, ``erl_nm``, ...) and a ``stages`` map with the same figures per stage, in
    pipeline order (:data:`STAGE_ORDER`, then any others), the final one last as ``final``.
    """
    dataset = dataset_config(config, dataset_name)
    if dataset.labels is None:
        raise InputError(f"datasets.{dataset_name}.labels: not configured, nothing to evaluate")
    labels = open_dataset_volume(dataset, "labels").read()
    cfg = config["evaluation"]
    skeletons = skeletonize(
        labels,
        dataset.resolution_nm,
        dust_voxels=cfg["skeleton_dust_voxels"],
        scale=cfg["teasar_scale"],
        const_nm=cfg["teasar_const_nm"],
    )
    log.info("%s: %d ground-truth skeletons", dataset_name, len(skeletons))
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    ordered = sorted((stages or {}).items(), key=lambda kv: order.get(kv[0], len(order)))
    per_stage = {}
    for name, spec in [*ordered, ("final", segmentation)]:
        seg = read_volume(spec)
        if labels.shape != seg.shape:
            raise InputError(
                f"labels {dataset.labels} shape {labels.shape} != segmentation {spec} "
                f"shape {seg.shape}"
            )
        figures = segmentation_metrics(labels, seg)
        figures.update(
            segmentation_run_length(
                seg, skeletons, dataset.resolution_nm, cfg["erl_merge_min_nodes"]
            ).as_dict()
        )
        per_stage[name] = figures
        log.info("%s %s: %s", dataset_name, name, json.dumps(figures))
    metrics = {**per_stage["final"], "stages": per_stage}
    write_json_atomic(metrics_json, metrics, sort_keys=False)  # stages in pipeline order
    return metrics
