"""Stage: FFN training - training centres per dataset (cached), then the training run.

``ffn_training.datasets`` names the training regions (dataset -> ROIs, voxels z, y, x);
``ffn_training.validation`` an optional held-out crop. The examples file of a dataset
(``results/ffn_training/examples/NAME.npz``) holds its partition-balanced centres for the
configured FOV and deltas; the run writes an ffnflow checkpoint that ``ffn.checkpoint``
can name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffnflow.config import DatasetConfig, dataset_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.training.coordinates import (
    ExampleCoordinates,
    example_margin,
    load_examples,
    region_coordinates,
    save_examples,
)
from ffnflow.ffn.training.examples import TrainingVolume
from ffnflow.ffn.training.run import train_ffn
from ffnflow.ffn.training.trainer import TrainingOptions
from ffnflow.ffn.training.validation import ValidationSet, make_validation_set
from ffnflow.stages.common import check_resolution, open_dataset_volume, open_raw
from ffnflow.volumes import Roi

log = logging.getLogger("ffnflow")

FFN_TRAINING_DIR = "results/ffn_training"


def training_options(config: dict[str, Any]) -> TrainingOptions:
    """:class:`TrainingOptions` from ``ffn_training``."""
    t = config["ffn_training"]
    keys = (
        "steps",
        "batch_size",
        "optimizer",
        "learning_rate",
        "momentum",
        "lr_schedule",
        "grad_clip",
        "init_activation",
        "pad_value",
        "move_threshold",
        "target_on",
        "target_off",
        "shuffle_moves",
        "device",
        "precision",
        "seed",
        "checkpoint_every",
        "validate_every",
        "log_every",
        "max_minutes",
    )
    return TrainingOptions(
        arch=dict(t["arch"]), augment=dict(t["augment"]), **{k: t[k] for k in keys}
    )


def _roi(
    dataset: DatasetConfig, shape: tuple[int, int, int], entry: Mapping[str, Any] | None, key: str
) -> Roi:
    entry = entry or {}
    offset = tuple(entry.get("offset_zyx") or (0, 0, 0))
    roi_shape = entry.get("shape_zyx") or tuple(s - o for s, o in zip(shape, offset))
    roi = Roi(offset, roi_shape)
    if roi.empty or not Roi.from_shape(shape).contains(roi):
        raise InputError(
            f"config key {key}: ROI {roi} is not inside {dataset.raw} of shape {shape}"
        )
    return roi


def training_rois(config: dict[str, Any], name: str) -> list[Roi]:
    """The training ROIs of dataset ``name`` (``ffn_training.datasets.NAME``)."""
    regions = config["ffn_training"]["datasets"]
    if name not in regions:
        raise InputError(
            f"config key ffn_training.datasets.{name}: not a training dataset (have {sorted(regions)})"
        )
    dataset = dataset_config(config, name)
    if dataset.labels is None:
        raise InputError(f"config key ffn_training.datasets.{name}: datasets.{name} has no labels")
    shape = open_raw(dataset).shape
    entries = regions[name] or [None]
    return [
        _roi(dataset, shape, e, f"ffn_training.datasets.{name}[{i}]") for i, e in enumerate(entries)
    ]


def examples_meta(config: dict[str, Any], name: str) -> dict[str, Any]:
    """What the examples file of a dataset depends on (checked when it is read)."""
    t = config["ffn_training"]
    ex = t["examples"]
    return {
        "margin_zyx": list(example_margin(t["arch"]["fov_size_zyx"], t["arch"]["deltas_zyx"])),
        "thresholds": [float(v) for v in ex["fraction_thresholds"]],
        "min_object_voxels": int(ex["min_object_voxels"]),
        "max_per_partition": int(ex["max_per_partition"]),
        "rois": [[list(r.offset), list(r.shape)] for r in training_rois(config, name)],
        "labels": config["datasets"][name]["labels"],
        "dataset_roi": config["datasets"][name].get("roi"),
    }


def run_prepare_ffn_examples(
    config: dict[str, Any], dataset_name: str, out_npz: str | Path
) -> ExampleCoordinates:
    """Partition-balanced training centres of one dataset's training ROIs, written to ``out_npz``."""
    dataset = dataset_config(config, dataset_name)
    meta = examples_meta(config, dataset_name)
    labels_volume = open_dataset_volume(dataset, "labels")
    coords, partition = [], []
    for i, (offset, shape) in enumerate(meta["rois"]):
        roi = Roi(offset, shape)
        c, p = region_coordinates(
            labels_volume.read(roi),
            roi.offset,
            meta["margin_zyx"],
            meta["thresholds"],
            meta["min_object_voxels"],
            meta["max_per_partition"],
            seed=i,
        )
        coords.append(c)
        partition.append(p)
    examples = ExampleCoordinates(
        dataset_name, np.concatenate(coords), np.concatenate(partition), meta
    )
    save_examples(out_npz, examples)
    log.info(
        "FFN training centres of %s (%d ROIs): %d, per partition %s",
        dataset_name,
        len(meta["rois"]),
        len(examples.coords),
        examples.counts(),
    )
    return examples


def _region_volume(dataset: DatasetConfig, roi: Roi) -> TrainingVolume:
    return TrainingVolume(
        dataset.name,
        open_raw(dataset).read(roi),
        open_dataset_volume(dataset, "labels").read(roi),
        roi.offset,
        dataset.image_mean,
        dataset.image_stddev,
    )


def _bounding_roi(rois: list[Roi]) -> Roi:
    lo = np.min([r.offset for r in rois], axis=0)
    hi = np.max([r.end for r in rois], axis=0)
    return Roi(lo, hi - lo)


def validation_set(config: dict[str, Any], options: TrainingOptions) -> ValidationSet | None:
    """The held-out crop of ``ffn_training.validation``, or None."""
    v = config["ffn_training"]["validation"]
    if not v.get("dataset"):
        return None
    dataset = dataset_config(config, v["dataset"])
    if dataset.labels is None:
        raise InputError(
            f"config key ffn_training.validation.dataset: datasets.{dataset.name} has no labels"
        )
    roi = _roi(dataset, open_raw(dataset).shape, v, "ffn_training.validation")
    for name in config["ffn_training"]["datasets"]:
        if name == dataset.name and any(
            not r.intersect(roi).empty for r in training_rois(config, name)
        ):
            raise InputError(
                f"config key ffn_training.validation: ROI {roi} overlaps a training ROI of {name}"
            )
    ex = config["ffn_training"]["examples"]
    return make_validation_set(
        _region_volume(dataset, roi),
        options.arch.fov_size_zyx,
        options.arch.deltas_zyx,
        InferenceOptions(**config["ffn"]["inference"]),
        n_examples=int(v["examples"]),
        max_seeds=int(v["max_seeds"]),
        thresholds=ex["fraction_thresholds"],
        min_object_voxels=int(ex["min_object_voxels"]),
        resolution_nm=dataset.resolution_nm,
    )


def run_train_ffn(
    config: dict[str, Any],
    examples: Mapping[str, str | Path] | None,
    out_checkpoint: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    state_path: str | Path,
    threads: int | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train the FFN as ``ffn_training`` says (resuming from ``state_path`` when it holds
    the same run). ``examples``: dataset name -> examples file; a missing file is
    prepared first. Writes the checkpoint, CSV log and loss curves."""
    if threads:
        torch.set_num_threads(threads)
    t = config["ffn_training"]
    if not t["datasets"]:
        raise InputError(
            "config key ffn_training.datasets: empty; name the datasets (with labels) and ROIs to train on"
        )
    options = training_options(config)
    validation = validation_set(config, options)
    examples = dict(examples or {})
    volumes, centres, sources, resolution, normalization = [], [], {}, None, None
    for name in t["datasets"]:
        dataset = dataset_config(config, name)
        path = Path(examples.get(name) or Path(FFN_TRAINING_DIR) / "examples" / f"{name}.npz")
        if not path.is_file():
            run_prepare_ffn_examples(config, name, path)
        centres.append(load_examples(path, expect=examples_meta(config, name)))
        rois = training_rois(config, name)
        volumes.append(_region_volume(dataset, _bounding_roi(rois)))
        if resolution is not None and not np.allclose(resolution, dataset.resolution_nm):
            raise InputError(
                f"config key ffn_training.datasets.{name}: resolution {list(dataset.resolution_nm)} "
                f"differs from the other training data's {list(resolution)}"
            )
        resolution = dataset.resolution_nm
        normalization = normalization or {
            "image_mean": dataset.image_mean,
            "image_stddev": dataset.image_stddev,
        }
        sources[name] = {
            "raw": dataset.raw,
            "labels": dataset.labels,
            "rois": [[list(r.offset), list(r.shape)] for r in rois],
            "image_mean": dataset.image_mean,
            "image_stddev": dataset.image_stddev,
        }
    init = t["init_checkpoint"]
    if init:
        check_resolution(
            dataset_config(config, next(iter(t["datasets"]))),
            f"init checkpoint {init}",
            load_checkpoint(init).resolution_nm,
        )
    log.info(
        "training an FFN (%s) on %s for %d steps, batch %d, on %s",
        options.arch,
        ", ".join(
            f"{v.name} {v.raw.shape} ({len(c.coords)} centres)" for v, c in zip(volumes, centres)
        ),
        options.steps,
        options.batch_size,
        options.device,
    )
    return train_ffn(
        volumes,
        centres,
        options,
        out_checkpoint,
        log_csv,
        curve_png,
        state_path,
        normalization,
        resolution,
        sources=sources,
        validation=validation,
        init_checkpoint=init or None,
        stop_after=stop_after,
    )
