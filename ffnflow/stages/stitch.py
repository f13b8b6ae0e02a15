"""Stage: stitch the blocks' segmentations into one volume with global ids.

Peak memory is that of a few blocks: overlaps are read pairwise and the output is written
block by block.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import fastremap
import h5py
import numpy as np

from ffnflow.atomic import atomic_output, write_json_atomic
from ffnflow.blocks import Block, BlockGrid
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import COUNTER_NAMES
from ffnflow.seeds import read_seeds_csv
from ffnflow.stages.common import block_grid, open_raw
from ffnflow.stitch import overlap_matches, relabel_table
from ffnflow.volumes import Roi, create_volume, write_region

log = logging.getLogger("ffnflow")

# Block counters that add up across blocks. Voxel counts do not (blocks overlap in their
# context): the stitched volume's labelled voxels are counted while it is written.
ADDITIVE_COUNTERS = tuple(n for n in COUNTER_NAMES if n != "voxels_segmented") + (
    "wall_s",
    "fov_evaluations_total",
    "fov_evaluations_discarded",
    "objects_restarted",
    "objects_cancelled",
    "forward_batches",
)


def _read_block_labels(path: str | Path, roi: Roi, read_roi: Roi) -> np.ndarray:
    """Labels of a block file over a global ROI inside the block's read ROI."""
    local = Roi(np.subtract(roi.offset, read_roi.offset), roi.shape)
    with h5py.File(path, "r") as f:
        return f["labels"][local.to_slices()]


def _global_labels(
    path: str | Path, roi: Roi, block: Block, offset: int, table: dict[int, int]
) -> np.ndarray:
    """A block's labels over ``roi`` mapped to final ids (uint64, z, y, x)."""
    labels = _read_block_labels(path, roi, block.read_roi).astype(np.uint64)
    labels[labels > 0] += np.uint64(offset)
    return fastremap.remap(labels, table, preserve_missing_labels=False, in_place=True)


def _final_labels(
    block: Block,
    grid: BlockGrid,
    block_files: dict[str, str | Path],
    offsets: dict[str, int],
    table: dict[int, int],
) -> np.ndarray:
    """Final labels of a block's write ROI: its own, and where it has none, a neighbour's.

    A neighbour may have traced an object into this block's write ROI (its context) from a
    seed this block does not have; such voxels take the neighbour's label (first neighbour
    in grid order wins).
    """
    labels = _global_labels(block_files[block.id], block.write_roi, block, offsets[block.id], table)
    for other in grid.overlapping(block.write_roi):
        region = other.read_roi.intersect(block.write_roi)
        if other == block or labels.all():
            continue
        theirs = _global_labels(block_files[other.id], region, other, offsets[other.id], table)
        local = Roi(np.subtract(region.offset, block.write_roi.offset), region.shape).to_slices()
        mine = labels[local]
        empty = mine == 0
        mine[empty] = theirs[empty]
    return labels


def run_stitch(
    config: dict[str, Any],
    dataset_name: str,
    block_files: dict[str, str | Path],
    segmentation_h5: str | Path,
    counters_json: str | Path,
    merges_json: str | Path,
    seeds_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Stitch block segmentations (``block_files``: block id -> block ``ffn.h5``).

    ``seeds_csv``, the dataset's gathered seed file, is checked against the blocks' counts.
    """
    dataset = dataset_config(config, dataset_name)
    raw = open_raw(dataset)
    grid = block_grid(config, raw.shape)
    blocks = list(grid)
    missing = sorted(set(grid.ids) - set(block_files))
    if missing:
        raise InputError(f"stitching {dataset_name}: no segmentation for blocks {missing}")

    counts, block_counters = {}, []
    for block in blocks:
        with h5py.File(block_files[block.id], "r") as f:
            attrs = f["labels"].attrs
            if tuple(attrs["read_offset_zyx"]) != block.read_roi.offset:
                raise InputError(
                    f"block file {block_files[block.id]}: read offset {list(attrs['read_offset_zyx'])} "
                    f"does not match block {block.id} {block.read_roi}; was the grid changed?"
                )
            counts[block.id] = int(attrs["n_segments"])
            block_counters.append(json.loads(attrs["counters"]))
    offsets, total = {}, 0
    for block in blocks:
        offsets[block.id] = total
        total += counts[block.id]

    stitch_cfg = config["blocks"]
    merges = []
    for a, b in grid.neighbour_pairs():
        overlap = a.read_roi.intersect(b.read_roi)
        la = _read_block_labels(block_files[a.id], overlap, a.read_roi)
        lb = _read_block_labels(block_files[b.id], overlap, b.read_roi)
        for sa, sb, voxels in overlap_matches(
            la, lb, stitch_cfg["min_overlap_voxels"], stitch_cfg["min_overlap_fraction"]
        ):
            merges.append(
                {"block_a": a.id, "id_a": sa, "block_b": b.id, "id_b": sb, "voxels": voxels}
            )
    table = relabel_table(
        [offsets[b.id] for b in blocks],
        [counts[b.id] for b in blocks],
        [(offsets[m["block_a"]] + m["id_a"], offsets[m["block_b"]] + m["id_b"]) for m in merges],
    )
    n_final = max(table.values(), default=0)

    with atomic_output(segmentation_h5) as tmp:
        spec = f"{tmp}:labels"
        create_volume(
            spec,
            raw.shape,
            np.uint64,
            dataset.resolution_nm,
            "segmentation",
            chunk_zyx=[min(64, s) for s in grid.block_shape],
        )
        voxels_segmented = 0
        for block in blocks:
            labels = _final_labels(block, grid, block_files, offsets, table)
            voxels_segmented += int(np.count_nonzero(labels))
            write_region(
                spec,
                labels,
                block.write_roi.offset,
            )
    counters: dict[str, Any] = {
        k: sum(c.get(k, 0) for c in block_counters) for k in ADDITIVE_COUNTERS
    }
    counters.update(
        voxels_segmented=voxels_segmented,
        blocks=len(blocks),
        block_segments=total,
        stitch_merges=len(merges),
        segments=n_final,
        device=block_counters[0].get("device") if block_counters else None,
        precision=block_counters[0].get("precision") if block_counters else None,
    )
    if seeds_csv is not None and len(read_seeds_csv(seeds_csv)) != counters["seeds_total"]:
        raise InputError(
            f"seed file {seeds_csv}: {len(read_seeds_csv(seeds_csv))} seeds, but the blocks tried "
            f"{counters['seeds_total']}; rerun the workflow so that seeds and blocks agree"
        )
    write_json_atomic(merges_json, {"merges": merges, "id_offsets": offsets, "segments": n_final})
    write_json_atomic(counters_json, {"counters": counters})
    log.info(
        "stitched %d blocks of %s: %d merges, %d segments",
        len(blocks),
        dataset_name,
        len(merges),
        n_final,
    )
    return counters
