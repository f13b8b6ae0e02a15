"""Export a segmentation (``labels``, z, y, x) as an OME-Zarr label image (NGFF 0.4), for
napari, webknossos, Neuroglancer and other zarr readers.

The group holds a multiscale pyramid: level 0 is the segmentation; each further level
takes every second voxel along the finest axes (nearest neighbour: labels are never
averaged) until every axis of a level is under 128 voxels (two 64-voxel chunks) or 5
levels are written.
Axes z, y, x in nanometres; the scales are the voxel size and the translation places the
volume at the dataset's ``roi`` offset in the whole raw volume. Written block by block
(a block of level 0 at a time) into a temporary folder that is renamed when complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.stages.common import block_grid
from ffnflow.volumes import open_volume

log = logging.getLogger("ffnflow")

CHUNK = 64
MAX_LEVELS = 5


def pyramid_steps(
    shape_zyx: tuple[int, ...], resolution_nm: tuple[float, float, float]
) -> list[tuple[int, int, int]]:
    """The voxel step of every level (level 0: (1, 1, 1)): each level doubles the step of
    the axes whose voxel size is within 1.5x of the finest, while any axis of the level is
    at least 2 * CHUNK voxels, for at most MAX_LEVELS levels."""
    steps = [(1, 1, 1)]
    while len(steps) < MAX_LEVELS:
        step = steps[-1]
        size = [r * s for r, s in zip(resolution_nm, step)]
        shape = [-(-n // s) for n, s in zip(shape_zyx, step)]
        if max(shape) < 2 * CHUNK:
            break
        finest = min(size)
        steps.append(tuple(s * 2 if z <= 1.5 * finest else s for s, z in zip(step, size)))
    return steps


def _multiscale(
    steps: list[tuple[int, int, int]],
    resolution_nm: tuple[float, float, float],
    offset_zyx: tuple[int, int, int],
    name: str,
) -> dict[str, Any]:
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    datasets = []
    for level, step in enumerate(steps):
        scale = [r * s for r, s in zip(resolution_nm, step)]
        # Level voxel i is voxel i * step of level 0: same origin, larger scale.
        translation = [o * r for o, r in zip(offset_zyx, resolution_nm)]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {"version": "0.4", "name": name, "axes": axes, "datasets": datasets}


def run_export_zarr(
    config: dict[str, Any],
    dataset_name: str,
    segmentation_h5: str | Path,
    out: str | Path,
) -> dict[str, Any]:
    """Write ``segmentation_h5:labels`` as an OME-Zarr label image at ``out`` (a new
    folder, or an earlier export, which is replaced); returns its multiscale metadata."""
    import tensorstore as ts

    dataset = dataset_config(config, dataset_name)
    out = Path(out)
    if out.exists() and not (out / ".zattrs").is_file():
        raise InputError(f"{out}: exists and is not a zarr group; choose a new path")
    source = open_volume(f"{segmentation_h5}:labels")
    if source.dtype.kind != "u":
        raise InputError(
            f"{segmentation_h5}:labels: dtype {source.dtype} is not an unsigned label type"
        )
    resolution = dataset.resolution_nm
    steps = pyramid_steps(source.shape, resolution)
    grid = block_grid(config, source.shape)
    dtype = np.uint64 if source.dtype.itemsize > 4 else np.uint32
    multiscale = _multiscale(steps, resolution, dataset.roi_offset_zyx, "segmentation")
    with atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        attrs = {"multiscales": [multiscale], "image-label": {"version": "0.4"}}
        (tmp / ".zattrs").write_text(json.dumps(attrs, indent=1))
        stores = []
        for level, step in enumerate(steps):
            shape = [-(-n // s) for n, s in zip(source.shape, step)]
            metadata = {
                "shape": shape,
                "chunks": [min(CHUNK, n) for n in shape],
                "dtype": np.dtype(dtype).str,
                "compressor": {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 2},
                "dimension_separator": "/",
            }
            spec = {"driver": "zarr", "kvstore": f"file://{tmp}/{level}/", "metadata": metadata}
            stores.append(ts.open(spec, create=True).result())
        for block in grid:
            labels = source.read(block.write_roi).astype(dtype, copy=False)
            for store, step in zip(stores, steps):
                # The level's voxels inside this block: level index i takes voxel i * step.
                first = [-(-o // s) for o, s in zip(block.write_roi.offset, step)]
                last = [-(-e // s) for e, s in zip(block.write_roi.end, step)]
                if any(a >= b for a, b in zip(first, last)):
                    continue
                local = tuple(
                    slice(f * s - o, None, s)
                    for f, s, o in zip(first, step, block.write_roi.offset)
                )
                region = tuple(slice(a, b) for a, b in zip(first, last))
                store[region].write(labels[local]).result()
    log.info("exported %s as OME-Zarr %s: %d levels", segmentation_h5, out, len(steps))
    return multiscale
