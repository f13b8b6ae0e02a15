"""Inputs shared by the stages: a dataset's volumes, checked, and its block grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from ffnflow.blocks import Block, BlockGrid
from ffnflow.config import DatasetConfig
from ffnflow.errors import InputError
from ffnflow.volumes import Roi, Volume, open_volume


def check_resolution(dataset: DatasetConfig, what: str, resolution_nm: Any) -> None:
    """Fail when a recorded voxel size (nm, z, y, x) differs from the dataset's."""
    if resolution_nm is None:
        return
    if not np.allclose(np.asarray(resolution_nm, float), dataset.resolution_nm, rtol=1e-3):
        raise InputError(
            f"datasets.{dataset.name}.resolution_nm {list(dataset.resolution_nm)} differs from "
            f"{what} {list(resolution_nm)} (z, y, x nm); resample the data or use a model "
            f"trained at this resolution"
        )


def open_raw(dataset: DatasetConfig) -> Volume:
    """The raw volume of a dataset, checked against its voxel size, labels and mask shapes."""
    volume = open_volume(dataset.raw)
    check_resolution(dataset, f"the resolution recorded in {dataset.raw}", volume.resolution_nm)
    for role in ("labels", "mask"):
        spec = getattr(dataset, role)
        if spec is not None:
            other = open_volume(spec)
            if other.shape != volume.shape:
                raise InputError(
                    f"datasets.{dataset.name}.{role} {spec}: shape {other.shape} != raw "
                    f"{dataset.raw} shape {volume.shape}"
                )
    return volume


def read_raw(dataset: DatasetConfig, roi: Roi | None = None) -> np.ndarray:
    """Raw EM of a dataset (z, y, x), whole or a ROI, checked for NaN."""
    raw = open_raw(dataset).read(roi)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError(f"raw volume {dataset.raw}: contains NaN or infinite values")
    return raw


def normalize_image(raw: np.ndarray, dataset: DatasetConfig) -> np.ndarray:
    """``(raw - image_mean) / image_stddev`` as float32."""
    return (raw.astype(np.float32) - dataset.image_mean) / dataset.image_stddev


def read_mask(dataset: DatasetConfig, roi: Roi | None = None) -> np.ndarray | None:
    """The exclusion mask of a dataset (bool, True = excluded) over a ROI, or None."""
    return None if dataset.mask is None else open_volume(dataset.mask).read(roi).astype(bool)


def block_grid(config: dict[str, Any], volume_shape: tuple[int, int, int]) -> BlockGrid:
    """The block grid of the ``blocks:`` config over a volume."""
    blocks = config["blocks"]
    return BlockGrid(volume_shape, tuple(blocks["shape_zyx"]), tuple(blocks["context_zyx"]))


def dataset_block(config: dict[str, Any], dataset: DatasetConfig, block_id: str) -> Block:
    """A block of a dataset's grid by id (``z{i}_y{j}_x{k}``)."""
    return block_grid(config, open_raw(dataset).shape).block_by_id(block_id)
