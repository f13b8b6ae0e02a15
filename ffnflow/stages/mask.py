"""Stage: the mask net - prediction per block, the dataset's mask.h5, and training.

``results/NAME/mask.h5`` holds one uint8 dataset per class of the model (``boundary``,
``exclude``, then user classes): probability x 255, z, y, x, the shape of the raw volume.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ffnflow.atomic import atomic_output
from ffnflow.config import DatasetConfig, dataset_config
from ffnflow.errors import InputError
from ffnflow.masknet.model import BASE_CLASSES, LoadedMaskNet, load_masknet
from ffnflow.masknet.prediction import predict_roi, quantize, whole_sections
from ffnflow.masknet.training import TrainingOptions, TrainingVolume, train_masknet
from ffnflow.stages.common import (
    block_grid,
    check_resolution,
    check_roi_normalisation,
    dataset_block,
    open_dataset_volume,
    open_raw,
    probability_level,
)
from ffnflow.volumes import Roi, create_volume, open_volume, write_region

log = logging.getLogger("ffnflow")


def load_checked_masknet(config: dict[str, Any], dataset: DatasetConfig) -> LoadedMaskNet:
    """The configured mask net, checked against the dataset's voxel size."""
    loaded = load_masknet(config["masknet"]["checkpoint"])
    check_resolution(dataset, f"mask net checkpoint {loaded.path} resolution", loaded.resolution_nm)
    return loaded


def run_predict_mask(
    config: dict[str, Any],
    dataset_name: str,
    block_id: str,
    out_h5: str | Path,
    threads: int | None = None,
) -> None:
    """Mask net probabilities over one block's write ROI, written to ``out_h5``.

    One uint8 dataset per class over the write ROI, with attributes ``write_offset_zyx``
    and ``checkpoint``. The result does not depend on the block shape.
    """
    if threads:
        torch.set_num_threads(threads)
    dataset = dataset_config(config, dataset_name)
    block = dataset_block(config, dataset, block_id)
    raw = open_raw(dataset)
    check_roi_normalisation(dataset, block.write_roi, f"block {block_id}")
    loaded = load_checked_masknet(config, dataset)
    norm = {"image_mean": dataset.image_mean, "image_stddev": dataset.image_stddev}
    if any(abs(norm[k] - loaded.normalization.get(k, norm[k])) > 1e-6 for k in norm):
        log.warning("normalisation %s differs from the mask net's %s", norm, loaded.normalization)
    mn = config["masknet"]
    prob = predict_roi(
        loaded.model, raw.read, raw.shape, block.write_roi, norm, mn["tile_zyx"], mn["device"]
    )
    with atomic_output(out_h5) as tmp, h5py.File(tmp, "w") as f:
        for name, p in zip(loaded.classes, prob):
            ds = f.create_dataset(name, data=quantize(p), compression="gzip")
            ds.attrs["write_offset_zyx"] = list(block.write_roi.offset)
        f.attrs["checkpoint"] = str(loaded.path)
        f.attrs["classes"] = list(loaded.classes)
    log.info(
        "mask net on %s block %s (write ROI %s): exclude >= 0.5 on %.2f %% of voxels",
        dataset_name,
        block_id,
        block.write_roi,
        100 * float(np.mean(prob[1] >= 0.5)),
    )


def run_gather_mask(
    config: dict[str, Any],
    dataset_name: str,
    block_files: Mapping[str, str | Path],
    mask_h5: str | Path,
) -> None:
    """Assemble the blocks' predictions (block id -> file) into the dataset's ``mask.h5``."""
    dataset = dataset_config(config, dataset_name)
    raw = open_raw(dataset)
    grid = block_grid(config, raw.shape)
    missing = sorted(set(grid.ids) - set(block_files))
    if missing:
        raise InputError(f"mask of {dataset_name}: no prediction for blocks {missing}")
    absent = [str(block_files[b]) for b in grid.ids if not Path(block_files[b]).is_file()]
    if absent:
        raise InputError(f"mask of {dataset_name}: block prediction files not found: {absent}")
    with h5py.File(block_files[grid.ids[0]], "r") as f:
        classes = [str(c) for c in f.attrs["classes"]]
        checkpoint = str(f.attrs["checkpoint"])
    with atomic_output(mask_h5) as tmp:
        for name in classes:
            create_volume(
                f"{tmp}:{name}",
                raw.shape,
                np.uint8,
                dataset.resolution_nm,
                chunk_zyx=[min(64, s) for s in grid.block_shape],
                attrs={"probability_scale": 255, "checkpoint": checkpoint},
            )
        # Flagged voxels per section, counted as the blocks are written (section rule).
        level = probability_level(config["masknet"]["exclude_threshold"])
        flagged = np.zeros(raw.shape[0], np.int64)
        for block in grid:
            path = block_files[block.id]
            with h5py.File(path, "r") as f:
                for name in classes:
                    if name not in f:
                        raise InputError(f"mask block file {path}: no dataset {name!r}")
                    ds = f[name]
                    if (
                        tuple(ds.attrs["write_offset_zyx"]) != block.write_roi.offset
                        or ds.shape != block.write_roi.shape
                    ):
                        raise InputError(
                            f"mask block file {path}: covers {list(ds.attrs['write_offset_zyx'])} "
                            f"+ {ds.shape}, not block {block.id} {block.write_roi}; was the grid changed?"
                        )
                    data = ds[...]
                    write_region(f"{tmp}:{name}", data, block.write_roi.offset)
                    if name == "exclude":
                        z0 = block.write_roi.offset[0]
                        flagged[z0 : z0 + data.shape[0]] += np.count_nonzero(
                            data >= level, axis=(1, 2)
                        )
        fractions = flagged / float(raw.shape[1] * raw.shape[2])
        sections = mark_whole_sections(config, f"{tmp}:exclude", fractions)
    log.info(
        "mask of %s (%s) -> %s; sections excluded whole: %s",
        dataset_name,
        ", ".join(classes),
        mask_h5,
        sections.tolist(),
    )


def mark_whole_sections(
    config: dict[str, Any], exclude_spec: str, fractions: np.ndarray
) -> np.ndarray:
    """Set whole sections of the ``exclude`` volume (z, y, x) to 255 where the section rule
    (``masknet.section_exclude_fraction``) says so, given each section's fraction at or
    above ``masknet.exclude_threshold``; returns their z indices."""
    sections = whole_sections(fractions, config["masknet"]["section_exclude_fraction"])
    if len(sections):
        shape = open_volume(exclude_spec).shape
        for z in sections:
            write_region(exclude_spec, np.full((1, *shape[1:]), 255, np.uint8), (int(z), 0, 0))
    return sections


def training_volumes(config: dict[str, Any]) -> tuple[list[TrainingVolume], dict[str, Any]]:
    """The training ROIs of ``masknet.training.datasets``, read, and their description."""
    regions = config["masknet"]["training"]["datasets"]
    if not regions:
        raise InputError(
            "config key masknet.training.datasets: empty; name the datasets (with labels) and "
            "ROIs to train the mask net on"
        )
    n_classes = len(config["masknet"]["training"]["classes"])
    volumes, sources, resolution = [], [], None
    for name, rois in regions.items():
        key = f"config key masknet.training.datasets.{name}"
        dataset = dataset_config(config, name)
        raw = open_raw(dataset)
        annotation_spec = dataset.mask_labels
        if dataset.labels is None and annotation_spec is None:
            raise InputError(
                f"{key}: datasets.{name} has neither labels nor mask_labels to learn from"
            )
        annotation_volume = None
        if annotation_spec is not None:  # open_raw checked its shape
            annotation_volume = open_dataset_volume(dataset, "mask_labels")
        if resolution is not None and not np.allclose(resolution, dataset.resolution_nm):
            raise InputError(
                f"{key}: resolution {list(dataset.resolution_nm)} differs from the other "
                f"training data's {list(resolution)}"
            )
        resolution = dataset.resolution_nm
        for region in rois or [{"offset_zyx": [0, 0, 0]}]:
            offset = tuple(region["offset_zyx"])
            shape = region.get("shape_zyx") or tuple(s - o for s, o in zip(raw.shape, offset))
            roi = Roi(offset, shape)
            if roi.empty or not Roi.from_shape(raw.shape).contains(roi):
                raise InputError(
                    f"{key}: ROI {roi} is not inside the volume {dataset.raw} of shape {raw.shape}"
                )
            annotation = None if annotation_volume is None else annotation_volume.read(roi)
            if annotation is not None and n_classes and int(annotation.max(initial=0)) > n_classes:
                raise InputError(
                    f"datasets.{name}.mask_labels {annotation_spec}: class id "
                    f"{int(annotation.max())} but masknet.training.classes names only {n_classes}"
                )
            labels = (
                None if dataset.labels is None else open_dataset_volume(dataset, "labels").read(roi)
            )
            volumes.append(
                TrainingVolume(
                    name,
                    raw.read(roi),
                    labels,
                    annotation,
                    dataset.image_mean,
                    dataset.image_stddev,
                )
            )
            sources.append(
                {
                    "dataset": name,
                    "raw": dataset.raw,
                    "labels": dataset.labels,
                    "mask_labels": annotation_spec,
                    "roi_offset_zyx": list(roi.offset),
                    "roi_shape_zyx": list(roi.shape),
                }
            )
    return volumes, {"sources": sources, "resolution_nm": resolution}


def training_options(config: dict[str, Any]) -> TrainingOptions:
    """:class:`TrainingOptions` from ``masknet.training``."""
    t = dict(config["masknet"]["training"])
    t.pop("datasets")
    user = t.pop("classes")
    return TrainingOptions(**t, classes=(*BASE_CLASSES, *user))


def run_train_masknet(
    config: dict[str, Any],
    out_checkpoint: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    state_path: str | Path,
    threads: int | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train the mask net as ``masknet.training`` says; resume from ``state_path`` if it holds
    a run with the same options and data. Writes the checkpoint, CSV log and loss curve."""
    if threads:
        torch.set_num_threads(threads)
    options = training_options(config)
    volumes, info = training_volumes(config)
    log.info(
        "training the mask net on %s for %d steps (patch %s)",
        ", ".join(f"{v.name} {v.raw.shape}" for v in volumes),
        options.steps,
        options.patch_zyx,
    )
    return train_masknet(
        volumes,
        options,
        out_checkpoint,
        log_csv,
        curve_png,
        state_path,
        info["resolution_nm"],
        sources=info["sources"],
        stop_after=stop_after,
    )
