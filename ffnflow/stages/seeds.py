"""Stage: seed placement per block, and the dataset's seed file gathered from the blocks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.config import dataset_config
from ffnflow.seeds import place_seeds, read_seeds_csv, write_seeds_csv
from ffnflow.stages.common import dataset_block, normalize_image, read_mask, read_raw

log = logging.getLogger("ffnflow")


def run_place_seeds(
    config: dict[str, Any], dataset_name: str, block_id: str, seeds_csv: str | Path
) -> int:
    """Seeds of one block: placed on its read ROI, kept in its write ROI, global z, y, x."""
    dataset = dataset_config(config, dataset_name)
    block = dataset_block(config, dataset, block_id)
    image = normalize_image(read_raw(dataset, block.read_roi), dataset)
    local = place_seeds(
        image,
        policy=config["seeds"]["policy"],
        mask=read_mask(dataset, block.read_roi),
        resolution_nm=dataset.resolution_nm,
        min_distance=config["seeds"]["min_distance"],
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
