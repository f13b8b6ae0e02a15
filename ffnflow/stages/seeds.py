"""Stage: seed placement per block, and the dataset's seed file gathered from the blocks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.config import dataset_config
from ffnflow.seeds import place_seeds, read_seeds_csv, write_seeds_csv
from ffnflow.stages.common import (
    check_masknet_config,
    check_roi_normalisation,
    dataset_block,
    normalize_image,
    open_mask_output,
    open_raw,
    probability_level,
    read_movement_mask,
    read_raw,
)

log = logging.getLogger("ffnflow")


def run_place_seeds(
    config: dict[str, Any],
    dataset_name: str,
    block_id: str,
    seeds_csv: str | Path,
    mask_h5: str | Path | None = None,
) -> int:
    """Seeds of one block: placed on its read ROI, kept in its write ROI, global z, y, x.

    ``mask_h5`` is the dataset's mask net output, needed when ``masknet.enabled``: seeds
    then never lie where it excludes, and ``masknet_peaks`` reads its boundaries.
    """
    check_masknet_config(config)
    dataset = dataset_config(config, dataset_name)
    block = dataset_block(config, dataset, block_id)
    policy = config["seeds"]["policy"]
    mask = read_movement_mask(config, dataset, block.read_roi, mask_h5)
    image = boundary = None
    if policy == "masknet_peaks":
        shape = open_raw(dataset).shape
        boundary = open_mask_output(mask_h5, "boundary", shape).read(block.read_roi) / 255.0
    else:
        check_roi_normalisation(dataset, block.read_roi, f"block {block_id}")
        image = normalize_image(read_raw(dataset, block.read_roi), dataset)
    mn = config["masknet"]
    local = place_seeds(
        image,
        policy=policy,
        mask=mask,
        resolution_nm=dataset.resolution_nm,
        min_distance=(
            mn["seed_min_distance"]
            if policy == "masknet_peaks"
            else config["seeds"]["min_distance"]
        ),
        boundary=boundary,
        boundary_threshold=probability_level(mn["boundary_threshold"]) / 255.0 - 1e-6,
        min_boundary_distance=mn["seed_min_boundary_distance"],
        max_local_boundary=mn["seed_max_local_boundary"],
        local_radius=mn["seed_local_radius"],
    )
    seeds = local + np.asarray(block.read_roi.offset)
    inside = np.all((seeds >= block.write_roi.offset) & (seeds < block.write_roi.end), axis=1)
    write_seeds_csv(seeds_csv, seeds[inside])
    log.info("block %s of %s: %d seeds -> %s", block_id, dataset_name, int(inside.sum()), seeds_csv)
    return int(inside.sum())


def run_gather_seeds(block_seed_files: Sequence[str | Path], seeds_csv: str | Path) -> int:
    """Concatenate block seed files (in block order) into the dataset's seed file."""
    parts = [read_seeds_csv(path) for path in block_seed_files]
    seeds = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    write_seeds_csv(seeds_csv, seeds)
    return len(seeds)
