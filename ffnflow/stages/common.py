"""Inputs shared by the stages: a dataset's volumes, checked, and its block grid."""

from __future__ import annotations

from pathlib import Path
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


DATASET_VOLUME_ROLES = ("raw", "labels", "mask", "mask_labels")


def dataset_roi(dataset: DatasetConfig) -> Roi | None:
    """The dataset's ``roi`` (voxels, z, y, x, in the raw volume's frame), or None."""
    if dataset.roi_shape_zyx is None:
        return None
    return Roi(dataset.roi_offset_zyx, dataset.roi_shape_zyx)


def open_dataset_volume(dataset: DatasetConfig, role: str) -> Volume:
    """A volume of a dataset (``role``: raw, labels, mask or mask_labels) as the stages see
    it: through the dataset's ``roi`` when it has one (voxel 0 = the ROI's offset)."""
    if role not in DATASET_VOLUME_ROLES:
        raise ValueError(f"unknown dataset volume role {role!r}")
    spec = getattr(dataset, role)
    if spec is None:
        raise InputError(f"datasets.{dataset.name}.{role}: not given")
    return _through_roi(dataset, role, open_volume(spec))


def _through_roi(dataset: DatasetConfig, role: str, volume: Volume) -> Volume:
    """``volume`` (the dataset's ``role``) cropped to the dataset's ``roi``, if it has one."""
    roi = dataset_roi(dataset)
    if roi is None:
        return volume
    if not volume.roi.contains(roi):
        raise InputError(
            f"datasets.{dataset.name}.roi: offset {list(roi.offset)} shape {list(roi.shape)} "
            f"(z, y, x voxels) reaches outside {role} {volume.spec}, shape {list(volume.shape)}"
        )
    return volume.crop(roi)


def open_raw(dataset: DatasetConfig) -> Volume:
    """The raw volume of a dataset (through its ``roi``), checked against its voxel size and
    its labels and mask shapes."""
    volume = open_volume(dataset.raw)
    check_resolution(dataset, f"the resolution recorded in {dataset.raw}", volume.resolution_nm)
    for role in ("labels", "mask", "mask_labels"):
        spec = getattr(dataset, role)
        if spec is not None:
            other = open_volume(spec)
            if other.shape != volume.shape:
                raise InputError(
                    f"datasets.{dataset.name}.{role} {spec}: shape {other.shape} != raw "
                    f"{dataset.raw} shape {volume.shape}"
                )
    return _through_roi(dataset, "raw", volume)


def read_raw(dataset: DatasetConfig, roi: Roi | None = None) -> np.ndarray:
    """Raw EM of a dataset (z, y, x), whole or a ROI, checked for NaN."""
    raw = open_raw(dataset).read(roi)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError(f"raw volume {dataset.raw}: contains NaN or infinite values")
    return raw


# The FFN and the mask net expect a normalised image of about mean 0 and standard deviation 1.
# Far outside these limits the normalisation does not fit the volume (e.g. float EM in 0..1
# or uint16 EM with the uint8 defaults), and every stage would run to a meaningless result.
NORMALISED_MAX_ABS_MEAN = 8.0
NORMALISED_MIN_STDDEV = 0.05


def check_normalisation(raw: np.ndarray, dataset: DatasetConfig, where: str = "") -> None:
    """Fail when ``(raw - image_mean) / image_stddev`` is far from mean 0 / std 1 over the
    nonzero voxels of ``raw`` (a block, z, y, x; sampled every 2nd voxel per axis).

    Zero voxels (out-of-volume padding) are left out; blocks with under 1000 nonzero
    voxels or a constant intensity (padding) are not judged.
    """
    sample = np.asarray(raw)[::2, ::2, ::2]
    values = sample[sample != 0].astype(np.float64)
    if values.size < 1000:
        return
    raw_mean, raw_std = float(values.mean()), float(values.std())
    if raw_std == 0:
        return
    mean = (raw_mean - dataset.image_mean) / dataset.image_stddev
    std = raw_std / dataset.image_stddev
    if abs(mean) > NORMALISED_MAX_ABS_MEAN or std < NORMALISED_MIN_STDDEV:
        raise InputError(
            f"datasets.{dataset.name}: raw {dataset.raw}{where} ({raw.dtype}) has intensity "
            f"mean {raw_mean:.4g} and standard deviation {raw_std:.4g}, so with image_mean "
            f"{dataset.image_mean:g} and image_stddev {dataset.image_stddev:g} the networks "
            f"would see mean {mean:.3g} and standard deviation {std:.3g} instead of about 0 "
            f"and 1. Set datasets.{dataset.name}.image_mean / image_stddev to the volume's "
            f"(about {raw_mean:.4g} / {raw_std:.4g}) or convert it to uint8 like the model's "
            f"training data"
        )


def central_roi(roi: Roi, size: int = 64) -> Roi:
    """The part of ``roi`` within ``size`` voxels around its centre (z, y, x): a sample of a
    block read without reading the block."""
    shape = tuple(min(s, size) for s in roi.shape)
    return Roi(tuple(o + (s - c) // 2 for o, s, c in zip(roi.offset, roi.shape, shape)), shape)


def check_roi_normalisation(dataset: DatasetConfig, roi: Roi, what: str) -> None:
    """:func:`check_normalisation` of the raw volume's central 64³ voxels of ``roi``
    (``what`` names it in the error, e.g. "block z0_y0_x0"): once per job, not per read."""
    raw = open_raw(dataset)
    check_normalisation(raw.read(central_roi(roi)), dataset, f", centre of {what}")


def normalize_image(raw: np.ndarray, dataset: DatasetConfig) -> np.ndarray:
    """``(raw - image_mean) / image_stddev`` as float32."""
    return (raw.astype(np.float32) - dataset.image_mean) / dataset.image_stddev


def read_mask(dataset: DatasetConfig, roi: Roi | None = None) -> np.ndarray | None:
    """The exclusion mask of a dataset (bool, True = excluded) over a ROI, or None."""
    if dataset.mask is None:
        return None
    return open_dataset_volume(dataset, "mask").read(roi).astype(bool)


def block_grid(config: dict[str, Any], volume_shape: tuple[int, int, int]) -> BlockGrid:
    """The block grid of the ``blocks:`` config over a volume."""
    blocks = config["blocks"]
    return BlockGrid(volume_shape, tuple(blocks["shape_zyx"]), tuple(blocks["context_zyx"]))


def dataset_block(config: dict[str, Any], dataset: DatasetConfig, block_id: str) -> Block:
    """A block of a dataset's grid by id (``z{i}_y{j}_x{k}``)."""
    return block_grid(config, open_raw(dataset).shape).block_by_id(block_id)


# -- the mask net's output (results/NAME/mask.h5) as masks for seeds and flood filling -------


def masknet_enabled(config: dict[str, Any]) -> bool:
    """Whether the config predicts mask.h5 and gates seeds and flood filling with it."""
    return bool(config.get("masknet", {}).get("enabled", False))


def check_masknet_config(config: dict[str, Any]) -> None:
    """Fail when options need the mask net but it is off."""
    if config["seeds"]["policy"] == "masknet_peaks" and not masknet_enabled(config):
        raise InputError(
            "config key seeds.policy: masknet_peaks needs the mask net; set masknet.enabled: true "
            "or choose seeds.policy: sobel_peaks"
        )


def probability_level(threshold: float) -> int:
    """The uint8 level (probability x 255, rounded) from which a stored probability is
    ``>= threshold``."""
    return int(np.ceil(threshold * 255.0 - 1e-9))


def open_mask_output(mask_h5: str | Path, name: str, shape: tuple[int, int, int]) -> Volume:
    """A dataset (``boundary``, ``exclude``, ...) of a mask net output, checked against ``shape``."""
    volume = open_volume(f"{mask_h5}:{name}")
    if volume.shape != tuple(shape):
        raise InputError(
            f"mask net output {mask_h5}:{name}: shape {volume.shape} != raw shape {tuple(shape)}; "
            f"was it predicted for another volume?"
        )
    return volume


def read_exclude(
    config: dict[str, Any], mask_h5: str | Path, shape: tuple[int, int, int], roi: Roi | None = None
) -> np.ndarray:
    """Voxels (bool) whose mask net ``exclude`` probability is >= masknet.exclude_threshold."""
    level = probability_level(config["masknet"]["exclude_threshold"])
    return open_mask_output(mask_h5, "exclude", shape).read(roi) >= level


def read_movement_mask(
    config: dict[str, Any],
    dataset: DatasetConfig,
    roi: Roi | None = None,
    mask_h5: str | Path | None = None,
) -> np.ndarray | None:
    """Where no seed, FFN move or label may go (bool, True = excluded) over a ROI, or None.

    The dataset's ``mask``, and with the mask net enabled, its ``exclude`` output
    (``mask_h5``, required then) at or above ``masknet.exclude_threshold``.
    """
    mask = read_mask(dataset, roi)
    if not masknet_enabled(config):
        return mask
    if mask_h5 is None:
        raise InputError(
            f"dataset {dataset.name}: masknet.enabled is true but no mask net output "
            f"(results/{dataset.name}/mask.h5) was given"
        )
    exclude = read_exclude(config, mask_h5, open_raw(dataset).shape, roi)
    return exclude if mask is None else mask | exclude


def fill_excluded(image: np.ndarray, excluded: np.ndarray, max_gap: int) -> np.ndarray:
    """``image`` (z, y, x) with excluded voxels interpolated along z (a copy).

    Each excluded voxel takes the linear interpolation between the nearest kept voxels
    above and below it in its (y, x) column when they are at most ``max_gap`` sections
    apart (gap length), the nearest kept voxel when only one side has one within
    ``max_gap``, else 0 (the mean of a normalised image).
    """
    out = np.array(image, dtype=np.float32, copy=True)
    if max_gap <= 0 or not excluded.any():
        return out
    nz = image.shape[0]
    z = np.arange(nz).reshape(-1, 1, 1)
    kept = ~excluded
    below = np.maximum.accumulate(np.where(kept, z, -1), axis=0)
    above = np.minimum.accumulate(np.where(kept, z, nz)[::-1], axis=0)[::-1]
    has_below = (below >= 0) & (z - below <= max_gap)
    has_above = (above < nz) & (above - z <= max_gap)
    vb = np.take_along_axis(image, np.clip(below, 0, nz - 1), axis=0)
    va = np.take_along_axis(image, np.clip(above, 0, nz - 1), axis=0)
    both = has_below & has_above & (above - below - 1 <= max_gap)
    w = (z - below) / np.maximum(above - below, 1)
    value = np.where(
        both, vb + w * (va - vb), np.where(has_below, vb, np.where(has_above, va, 0.0))
    )
    out[excluded] = value[excluded]
    return out


def ffn_inputs(
    config: dict[str, Any],
    dataset: DatasetConfig,
    roi: Roi | None = None,
    mask_h5: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The FFN's normalised image and movement mask (bool, True = excluded) over a ROI.

    With the mask net enabled, excluded voxels of the image are filled along z
    (:func:`fill_excluded`, ``masknet.fill_excluded_sections``) so that the FFN sees
    through a lost section; they stay masked, so never seeded, entered or labelled.
    """
    image = normalize_image(read_raw(dataset, roi), dataset)
    mask = read_movement_mask(config, dataset, roi, mask_h5)
    if mask is not None and masknet_enabled(config):
        image = fill_excluded(image, mask, int(config["masknet"]["fill_excluded_sections"]))
    return image, mask
