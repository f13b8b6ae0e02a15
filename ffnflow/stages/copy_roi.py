"""Copy a dataset's box (``datasets.NAME.roi``) of its volumes into one local HDF5 file.

For machines that cannot reach the bucket of a remote volume (cluster nodes without
network access): run once where the bucket is reachable, then use the printed ``datasets:``
entry. Every volume of the dataset (raw, labels, mask, mask_labels) is copied block by
block (the ``blocks:`` grid; never the whole box in memory) into the dataset of the same
name, with the attributes ``roi_offset_zyx`` and ``source``; the file appears only when
complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.stages.common import DATASET_VOLUME_ROLES, block_grid, open_dataset_volume, open_raw
from ffnflow.volumes import create_volume, write_region

log = logging.getLogger("ffnflow")


def run_copy_roi(config: dict[str, Any], dataset_name: str, out_h5: str | Path) -> dict[str, Any]:
    """Copy the dataset's volumes within its ``roi`` (the whole volumes without one) to
    ``out_h5``; returns the ``datasets:`` entry that reads the copy (z, y, x voxels)."""
    dataset = dataset_config(config, dataset_name)
    out_h5 = Path(out_h5).resolve()
    shape = open_raw(dataset).shape  # checks the voxel size and the volumes' shapes
    offset = list(dataset.roi_offset_zyx)
    grid = block_grid(config, shape)
    entry: dict[str, Any] = {}
    with atomic_output(out_h5) as tmp:
        for role in DATASET_VOLUME_ROLES:
            spec = getattr(dataset, role)
            if spec is None:
                continue
            volume = open_dataset_volume(dataset, role)
            layer = "segmentation" if role == "labels" and volume.dtype.kind in "ui" else "image"
            target = f"{tmp}:{role}"
            create_volume(
                target,
                shape,
                volume.dtype,
                dataset.resolution_nm,
                layer,
                attrs={"roi_offset_zyx": offset, "source": str(spec)},
            )
            for block in grid:
                write_region(target, volume.read(block.write_roi), block.write_roi.offset)
            entry[role] = f"{out_h5}:{role}"
            log.info("copied %s %s (offset %s, shape %s)", role, spec, offset, list(shape))
    entry["resolution_nm"] = list(dataset.resolution_nm)
    entry["image_mean"] = dataset.image_mean
    entry["image_stddev"] = dataset.image_stddev
    return entry


def entry_text(name: str, entry: dict[str, Any], dataset_has_synapses: bool) -> str:
    """The ``datasets:`` entry of a copy as YAML (JSON values are valid YAML)."""
    lines = ["datasets:", f"  {name}:"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in entry.items()]
    if dataset_has_synapses:
        lines.append(
            "    # synapses: the table's points are in the source volume's frame; subtract "
            "roi_offset_zyx (voxels) before using it with the copy"
        )
    return "\n".join(lines)
