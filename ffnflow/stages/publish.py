"""Stage: publish the last segmentation stage as ``segmentation.h5`` and a precomputed layer."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.stages.common import block_grid
from ffnflow.volumes import create_precomputed, open_volume, write_region

log = logging.getLogger("ffnflow")


def chunk_shape(block_shape: tuple[int, int, int], largest: int = 64) -> tuple[int, int, int]:
    """Largest chunk edge <= ``largest`` dividing the block edge, per axis (z, y, x).

    With such chunks every block write ROI is chunk-aligned, so parallel block writers
    never share a chunk.
    """
    return tuple(max(d for d in range(1, min(b, largest) + 1) if b % d == 0) for b in block_shape)


def run_publish(
    config: dict[str, Any],
    dataset_name: str,
    source_h5: str | Path,
    segmentation_h5: str | Path,
    precomputed_dir: str | Path,
) -> None:
    """Copy the final stage's HDF5 and write it as a precomputed segmentation, block by block."""
    dataset = dataset_config(config, dataset_name)
    with atomic_output(segmentation_h5) as tmp:
        shutil.copyfile(source_h5, tmp)
    source = open_volume(f"{source_h5}:labels")
    grid = block_grid(config, source.shape)
    with atomic_output(precomputed_dir) as tmp:
        url = f"precomputed://file://{Path(tmp).resolve()}"
        create_precomputed(
            url,
            source.shape,
            np.uint64,
            dataset.resolution_nm,
            "segmentation",
            chunk_zyx=chunk_shape(grid.block_shape),
        )
        for block in grid:
            write_region(url, source.read(block.write_roi), block.write_roi.offset)
    log.info("published %s -> %s and %s", source_h5, segmentation_h5, precomputed_dir)
