"""Pipeline stages from configuration and file paths to files on disk.

Each function is one stage of the workflow; the Snakemake scripts and the ``ffnflow``
command line both call these, so a stage behaves the same with or without Snakemake.
Inputs are validated up front with errors that name the input; outputs are written
atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output, write_json_atomic
from ffnflow.config import DatasetConfig, dataset_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import place_seeds, read_seeds_csv, write_seeds_csv
from ffnflow.volumes import open_volume, read_volume, write_volume

log = logging.getLogger("ffnflow")


def _check_resolution(dataset: DatasetConfig, what: str, resolution_nm: Any) -> None:
    """Fail when a recorded voxel size (nm, z, y, x) differs from the dataset's."""
    if resolution_nm is None:
        return
    if not np.allclose(np.asarray(resolution_nm, float), dataset.resolution_nm, rtol=1e-3):
        raise InputError(
            f"datasets.{dataset.name}.resolution_nm {list(dataset.resolution_nm)} differs from "
            f"{what} {list(resolution_nm)} (z, y, x nm); resample the data or use a model "
            f"trained at this resolution"
        )


def load_raw(dataset: DatasetConfig) -> np.ndarray:
    """The raw EM image of a dataset (z, y, x), checked for shape, NaN and voxel size."""
    volume = open_volume(dataset.raw)
    _check_resolution(dataset, f"the resolution recorded in {dataset.raw}", volume.resolution_nm)
    for role in ("labels", "mask"):
        spec = getattr(dataset, role)
        if spec is not None:
            other = open_volume(spec)
            if other.shape != volume.shape:
                raise InputError(
                    f"datasets.{dataset.name}.{role} {spec}: shape {other.shape} != raw "
                    f"{dataset.raw} shape {volume.shape}"
                )
    raw = volume.read()
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError(f"raw volume {dataset.raw}: contains NaN or infinite values")
    return raw


def normalize_image(raw: np.ndarray, dataset: DatasetConfig) -> np.ndarray:
    """``(raw - image_mean) / image_stddev`` as float32."""
    return (raw.astype(np.float32) - dataset.image_mean) / dataset.image_stddev


def load_mask(dataset: DatasetConfig) -> np.ndarray | None:
    """The exclusion mask of a dataset (bool, True = excluded), or None."""
    return None if dataset.mask is None else read_volume(dataset.mask).astype(bool)


def run_place_seeds(config: dict[str, Any], dataset_name: str, seeds_csv: str | Path) -> int:
    """Place seeds for a dataset and write them (global z, y, x voxels); returns the count."""
    dataset = dataset_config(config, dataset_name)
    image = normalize_image(load_raw(dataset), dataset)
    seeds = place_seeds(
        image,
        policy=config["seeds"]["policy"],
        mask=load_mask(dataset),
        resolution_nm=dataset.resolution_nm,
        min_distance=config["seeds"]["min_distance"],
    )
    write_seeds_csv(seeds_csv, seeds)
    log.info("placed %d seeds in %s -> %s", len(seeds), dataset.raw, seeds_csv)
    return len(seeds)


def run_segment(
    config: dict[str, Any],
    dataset_name: str,
    seeds_csv: str | Path,
    segmentation_h5: str | Path,
    counters_json: str | Path,
    threads: int | None = None,
) -> dict[str, float]:
    """Flood-fill a dataset from its seeds; write labels (``file:labels``) and counters."""
    dataset = dataset_config(config, dataset_name)
    ffn_cfg = config["ffn"]
    loaded = load_checkpoint(ffn_cfg["checkpoint"])
    _check_resolution(dataset, f"FFN checkpoint {loaded.path} resolution", loaded.resolution_nm)
    norm = {"image_mean": dataset.image_mean, "image_stddev": dataset.image_stddev}
    if any(abs(norm[k] - loaded.normalization.get(k, norm[k])) > 1e-6 for k in norm):
        log.warning(
            "dataset %s normalisation %s differs from the model's %s", dataset.name, norm,
            loaded.normalization,
        )
    raw = load_raw(dataset)
    seeds = read_seeds_csv(seeds_csv)
    outside = (seeds < 0).any(axis=1) | (seeds >= np.array(raw.shape)).any(axis=1)
    if outside.any():
        raise InputError(
            f"seed file {seeds_csv}: {int(outside.sum())} seeds lie outside the volume "
            f"{raw.shape} (first: {seeds[outside][0].tolist()})"
        )
    options = InferenceOptions(**ffn_cfg["inference"])
    predictor = FovPredictor(loaded.model, ffn_cfg["device"], ffn_cfg["precision"], threads)
    log.info(
        "segmenting %s %s from %d seeds on %s (%s)", dataset.name, raw.shape, len(seeds),
        predictor.device, ffn_cfg["precision"],
    )
    canvas = Canvas(normalize_image(raw, dataset), predictor, options, movement_mask=load_mask(dataset))
    result = canvas.segment_all(map(tuple, seeds), progress=ffn_cfg["progress"])
    counters = {
        **result.counters,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "fov_per_s": result.counters["fov_evaluations"] / max(result.counters["wall_s"], 1e-9),
    }
    write_volume(
        f"{segmentation_h5}:labels",
        result.labels,
        resolution_nm=dataset.resolution_nm,
        layer_type="segmentation",
        attrs={"counters": counters, "checkpoint": str(loaded.path), "inference_options": ffn_cfg["inference"]},
    )
    origins = {str(k): list(v) for k, v in result.origins.items()}
    write_json_atomic(counters_json, {"counters": counters, "origins_zyx": origins})
    log.info("segmentation: %s", json.dumps(counters))
    return counters


def run_evaluate(
    config: dict[str, Any], dataset_name: str, segmentation: str, metrics_json: str | Path
) -> dict[str, float]:
    """Compare a segmentation volume spec with the dataset's labels; write metrics JSON."""
    dataset = dataset_config(config, dataset_name)
    if dataset.labels is None:
        raise InputError(f"datasets.{dataset_name}.labels: not configured, nothing to evaluate")
    labels = read_volume(dataset.labels)
    seg = read_volume(segmentation)
    if labels.shape != seg.shape:
        raise InputError(
            f"labels {dataset.labels} shape {labels.shape} != segmentation {segmentation} "
            f"shape {seg.shape}"
        )
    metrics = segmentation_metrics(labels, seg)
    write_json_atomic(metrics_json, metrics)
    log.info("metrics for %s: %s", dataset_name, json.dumps(metrics))
    return metrics


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy a finished stage output to a published name, atomically."""
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
