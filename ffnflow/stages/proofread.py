"""Proofreading hand-off: the agglomeration's supervoxels and merges for Neuroglancer, and
the segmentation of an edited Neuroglancer state (:mod:`ffnflow.proofreading`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.proofreading import apply_equivalences, merge_edges, state_equivalences
from ffnflow.resegmentation import read_scores_csv
from ffnflow.volumes import read_volume, write_volume

log = logging.getLogger("ffnflow")


def agglomeration_graph(results_dir: str | Path) -> tuple[Path, list[tuple[int, int]]]:
    """The supervoxels (``cleaned.h5``) of a run's results and the pairs its agglomeration
    merged (from ``agglomeration_pairs.csv``; a spanning forest, :func:`merge_edges`)."""
    results_dir = Path(results_dir)
    supervoxels, pairs = results_dir / "cleaned.h5", results_dir / "agglomeration_pairs.csv"
    for path in (supervoxels, pairs):
        if not path.is_file():
            raise InputError(
                f"{path}: missing; the agglomeration graph needs a run with "
                "agglomeration.resegmentation enabled"
            )
    return supervoxels, merge_edges(read_scores_csv(pairs))


def run_apply_equivalences(
    config: dict[str, Any],
    dataset_name: str,
    supervoxels_h5: str | Path,
    state: str | Path,
    out_h5: str | Path,
    layer: str = "supervoxels",
) -> dict[str, int]:
    """Write the segmentation that the equivalences of ``layer`` in a Neuroglancer state
    (link, JSON or file) make of the supervoxels (``labels``, z, y, x) to ``out_h5``."""
    dataset = dataset_config(config, dataset_name)
    if Path(out_h5).resolve() == Path(supervoxels_h5).resolve():
        raise InputError(f"{out_h5}: would overwrite the supervoxels it is made from")
    supervoxels = read_volume(f"{supervoxels_h5}:labels")
    groups = state_equivalences(state, layer)
    labels = apply_equivalences(supervoxels, groups)
    counters = {
        "groups": sum(len(g) > 1 for g in groups),
        "supervoxels_in_groups": len({v for g in groups if len(g) > 1 for v in g}),
        "segments_in": int(np.count_nonzero(np.unique(supervoxels))),
        "segments_out": int(np.count_nonzero(np.unique(labels))),
    }
    write_volume(
        f"{out_h5}:labels",
        labels,
        dataset.resolution_nm,
        "segmentation",
        attrs={
            "roi_offset_zyx": list(dataset.roi_offset_zyx),
            "counters": json.dumps(counters),
            "supervoxels": str(supervoxels_h5),
        },
    )
    log.info("proofread segmentation of %s -> %s: %s", dataset_name, out_h5, counters)
    return counters
