"""Stage: FFN flood filling of a block (its read ROI) from the block's seeds, or of several
blocks together (their FOVs batched: a GPU's way)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import write_json_atomic
from ffnflow.blocks import Block
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.ffn.batched import BatchedCanvas, segment_canvases
from ffnflow.ffn.canvas import Canvas, InferenceOptions, SegmentationResult
from ffnflow.ffn.model import ConvStack3D, LoadedModel, load_checkpoint
from ffnflow.ffn.predictor import FovPredictor, resolve_device
from ffnflow.ffn.workers import segment_canvases_in_workers
from ffnflow.seeds import read_seeds_csv
from ffnflow.stages.common import (
    check_resolution,
    check_roi_normalisation,
    dataset_block,
    ffn_inputs,
    open_raw,
)
from ffnflow.volumes import Roi, write_volume

log = logging.getLogger("ffnflow")


def write_block_segmentation(
    path: str | Path,
    labels: np.ndarray,
    block: Block,
    n_segments: int,
    counters: dict[str, Any],
    resolution_nm: tuple[float, float, float],
    **attrs: Any,
) -> None:
    """Write a block's labels (local ids 1..n_segments over its read ROI) as stitching reads them."""
    write_volume(
        f"{path}:labels",
        labels,
        resolution_nm=resolution_nm,
        layer_type="segmentation",
        attrs={
            "read_offset_zyx": list(block.read_roi.offset),
            "write_offset_zyx": list(block.write_roi.offset),
            "write_shape_zyx": list(block.write_roi.shape),
            "n_segments": int(n_segments),
            "counters": counters,
            **attrs,
        },
    )


def border_padding(
    roi: Roi, volume_shape: tuple[int, int, int], fov_size_zyx, ffn_cfg: dict[str, Any]
) -> list[tuple[int, int]] | None:
    """Padding (before, after) per axis (z, y, x) of the image of ``roi`` at the volume border.

    With ``ffn.volume_border: mirror`` the image is mirrored by the FOV radius where the
    ROI (a block's read ROI, a resegmentation box) touches the volume border, so objects
    there can be seeded and traced; ``skip`` (the reference) leaves seeds without a full
    FOV of image unused.
    """
    if ffn_cfg.get("volume_border", "skip") != "mirror":
        return None
    radius = np.asarray(fov_size_zyx) // 2
    pad = [
        (int(r) if o == 0 else 0, int(r) if e == n else 0)
        for r, o, e, n in zip(radius, roi.offset, roi.end, volume_shape)
    ]
    return pad if any(a or b for a, b in pad) else None


def pad_volume_border(
    image: np.ndarray, movement_mask: np.ndarray | None, pad: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """The image mirrored by ``pad`` and a movement mask that keeps FOVs, seeds and labels
    out of the mirrored part (True there)."""
    mask = np.zeros(image.shape, dtype=bool) if movement_mask is None else movement_mask
    return np.pad(image, pad, mode="symmetric"), np.pad(mask, pad, constant_values=True)


def make_predictor(
    model: ConvStack3D, ffn_cfg: dict[str, Any], threads: int | None
) -> tuple[FovPredictor, int]:
    """The FOV predictor and the number of concurrent objects for the ``ffn:`` config.

    ``max_objects: auto`` is 1, the reference engine: batching does not pay on the CPU,
    and on an H200 one canvas averages only 3-8 FOVs per step, so calls padded to
    ``max_objects`` ran at 44-75 FOV/s against 239-271 FOV/s one at a time
    (``benchmarks/results/gpu_acceptance_h200_run1.json``). With several objects every
    model call holds exactly ``max_objects`` FOVs, which keeps the result independent of
    how the batches fill.
    """
    device = resolve_device(ffn_cfg["device"])
    max_objects = ffn_cfg["max_objects"]
    if max_objects == "auto":
        max_objects = 1
    predictor = FovPredictor(
        model,
        str(device),
        ffn_cfg["precision"],
        threads,
        fixed_batch=max_objects if max_objects > 1 and device.type == "cuda" else 1,
    )
    return predictor, int(max_objects)


@dataclass
class BlockFill:
    """A block ready to be flood-filled: its image (z, y, x, normalised, padded at the volume
    border as configured), movement mask and seeds in canvas coordinates."""

    block_id: str
    block: Block
    image: np.ndarray
    movement_mask: np.ndarray | None
    pad: list[tuple[int, int]] | None
    local_seeds: list[tuple[int, int, int]]


def load_ffn(config: dict[str, Any], dataset) -> LoadedModel:
    """The configured FFN checkpoint, checked against the dataset (resolution, normalisation)."""
    loaded = load_checkpoint(config["ffn"]["checkpoint"])
    check_resolution(dataset, f"FFN checkpoint {loaded.path} resolution", loaded.resolution_nm)
    norm = {"image_mean": dataset.image_mean, "image_stddev": dataset.image_stddev}
    if any(abs(norm[k] - loaded.normalization.get(k, norm[k])) > 1e-6 for k in norm):
        log.warning("normalisation %s differs from the model's %s", norm, loaded.normalization)
    return loaded


def prepare_block_fill(
    config: dict[str, Any],
    dataset,
    loaded: LoadedModel,
    block_id: str,
    seeds_csv: str | Path,
    mask_h5: str | Path | None,
    reverse_seeds: bool,
) -> BlockFill:
    """Read a block's image, mask and seeds (checked to lie in its write ROI)."""
    block = dataset_block(config, dataset, block_id)
    seeds = read_seeds_csv(seeds_csv)
    inside = np.all((seeds >= block.write_roi.offset) & (seeds < block.write_roi.end), axis=1)
    if not inside.all():
        raise InputError(
            f"seed file {seeds_csv}: {int((~inside).sum())} seeds lie outside block {block_id} "
            f"write ROI {block.write_roi} (first: {seeds[~inside][0].tolist()})"
        )
    if reverse_seeds:
        seeds = seeds[::-1]
    check_roi_normalisation(dataset, block.read_roi, f"block {block_id}")
    image, movement_mask = ffn_inputs(config, dataset, block.read_roi, mask_h5)
    pad = border_padding(
        block.read_roi, open_raw(dataset).shape, loaded.model.arch.fov_size_zyx, config["ffn"]
    )
    if pad is not None:
        image, movement_mask = pad_volume_border(image, movement_mask, pad)
    local_seeds = seeds - np.asarray(block.read_roi.offset)
    if pad is not None:
        local_seeds = local_seeds + np.array([lo for lo, _ in pad])
    return BlockFill(
        block_id, block, image, movement_mask, pad, [tuple(int(v) for v in s) for s in local_seeds]
    )


def write_block_fill(
    fill: BlockFill,
    result: SegmentationResult,
    dataset,
    loaded: LoadedModel,
    extra_counters: dict[str, Any],
    segmentation_h5: str | Path,
    counters_json: str | Path,
) -> dict[str, Any]:
    """Write a filled block's labels (its read ROI, local ids) and counters; the counters."""
    labels = result.labels
    if fill.pad is not None:
        labels = labels[tuple(slice(lo, n - hi) for (lo, hi), n in zip(fill.pad, labels.shape))]
    counters = {
        **result.counters,
        **extra_counters,
        "fov_per_s": result.counters["fov_evaluations"] / max(result.counters["wall_s"], 1e-9),
    }
    write_block_segmentation(
        segmentation_h5,
        labels,
        fill.block,
        len(result.origins),
        counters,
        dataset.resolution_nm,
        checkpoint=str(loaded.path),
    )
    origins = {
        str(k): [int(v) for v in np.add(o, fill.block.read_roi.offset)]
        for k, o in result.origins.items()
    }
    write_json_atomic(
        counters_json, {"block": fill.block_id, "counters": counters, "origins_zyx": origins}
    )
    log.info("block %s: %s", fill.block_id, json.dumps(counters))
    return counters


def run_segment(
    config: dict[str, Any],
    dataset_name: str,
    block_id: str,
    seeds_csv: str | Path,
    segmentation_h5: str | Path,
    counters_json: str | Path,
    threads: int | None = None,
    mask_h5: str | Path | None = None,
    reverse_seeds: bool = False,
) -> dict[str, Any]:
    """Flood-fill one block; write its labels over the read ROI (local ids) and counters.

    The labels go to ``segmentation_h5:labels`` (uint64, z, y, x of the read ROI) with the
    attributes ``read_offset_zyx``, ``write_offset_zyx``, ``write_shape_zyx`` and
    ``n_segments``; seeds are global z, y, x voxels inside the block's write ROI.
    ``mask_h5`` is the dataset's mask net output, needed when ``masknet.enabled``: its
    excluded voxels are never seeded, entered or labelled, and are filled along z in the
    FFN's image (``ffnflow.stages.common.ffn_inputs``). ``reverse_seeds`` visits the seeds
    in reverse order (the second pass of a consensus).
    """
    dataset = dataset_config(config, dataset_name)
    ffn_cfg = config["ffn"]
    loaded = load_ffn(config, dataset)
    fill = prepare_block_fill(config, dataset, loaded, block_id, seeds_csv, mask_h5, reverse_seeds)
    options = InferenceOptions(**ffn_cfg["inference"])
    predictor, max_objects = make_predictor(loaded.model, ffn_cfg, threads)
    log.info(
        "segmenting %s block %s (read ROI %s) from %d seeds on %s (%s)",
        dataset.name,
        block_id,
        fill.block.read_roi,
        len(fill.local_seeds),
        predictor.device,
        ffn_cfg["precision"],
    )
    if max_objects == 1:
        canvas = Canvas(fill.image, predictor, options, movement_mask=fill.movement_mask)
    else:
        canvas = BatchedCanvas(
            fill.image, predictor, options, fill.movement_mask, max_objects=max_objects
        )
    result = canvas.segment_all(fill.local_seeds, progress=ffn_cfg["progress"])
    extra = {
        "device": str(predictor.device),
        "precision": predictor.precision,
        "max_objects": max_objects,
    }
    return write_block_fill(fill, result, dataset, loaded, extra, segmentation_h5, counters_json)


def run_segment_blocks(
    config: dict[str, Any],
    dataset_name: str,
    block_ids: Sequence[str],
    seeds_csvs: Sequence[str | Path],
    segmentation_h5s: Sequence[str | Path],
    counters_jsons: Sequence[str | Path],
    threads: int | None = None,
    mask_h5: str | Path | None = None,
    reverse_seeds: bool = False,
    fill_workers: int | None = None,
) -> list[dict[str, Any]]:
    """Flood-fill several blocks together (``ffn.blocks_per_job``); per block, the outputs
    of :func:`run_segment`.

    Every step, the FOVs of all blocks go through one model call, so a GPU gets batches
    (README, "On a GPU"). On CUDA the blocks' bookkeeping runs in ``threads - 2`` forked
    worker processes (at least one; ``segment_canvases_in_workers``), on the CPU in this
    process; ``fill_workers`` overrides that (0: this process). Each block gets what its
    own BatchedCanvas gives: on the CPU exactly
    :func:`run_segment`'s result; on a GPU the batch sizes vary, which can change the last
    bits of fp32 logits and hence, rarely, a decision.
    """
    lengths = {len(block_ids), len(seeds_csvs), len(segmentation_h5s), len(counters_jsons)}
    if len(lengths) != 1:
        raise InputError(
            f"segment blocks: {len(block_ids)} blocks, {len(seeds_csvs)} seed files, "
            f"{len(segmentation_h5s)} and {len(counters_jsons)} outputs"
        )
    dataset = dataset_config(config, dataset_name)
    ffn_cfg = config["ffn"]
    loaded = load_ffn(config, dataset)
    options = InferenceOptions(**ffn_cfg["inference"])
    device = resolve_device(ffn_cfg["device"])
    max_objects = ffn_cfg["max_objects"]
    if max_objects == "auto":
        max_objects = 16 if device.type == "cuda" else 1
    if device.type == "cuda":
        predictor = FovPredictor(
            loaded.model, str(device), ffn_cfg["precision"], deterministic=False,
            pow2_batches=True,
        )  # fmt: skip
    else:  # one FOV per call: exactly the per-block result, and no slower on the CPU
        predictor = FovPredictor(
            loaded.model, str(device), ffn_cfg["precision"], threads, fixed_batch=1
        )
    fills = [
        prepare_block_fill(config, dataset, loaded, b, s, mask_h5, reverse_seeds)
        for b, s in zip(block_ids, seeds_csvs)
    ]
    canvases = [
        BatchedCanvas(f.image, predictor, options, f.movement_mask, max_objects=max_objects)
        for f in fills
    ]
    seeds = [f.local_seeds for f in fills]
    if fill_workers is None:
        fill_workers = max(1, (threads or 1) - 2) if device.type == "cuda" else 0
    workers = int(fill_workers)
    log.info(
        "segmenting %s blocks %s together from %d seeds on %s (%s, %d objects per block, "
        "%d fill workers)",
        dataset.name,
        ", ".join(block_ids),
        sum(len(s) for s in seeds),
        device,
        ffn_cfg["precision"],
        max_objects,
        workers,
    )
    t0 = time.perf_counter()
    if workers:
        results = segment_canvases_in_workers(canvases, seeds, predictor, workers, max_batch=512)
    else:
        results = segment_canvases(canvases, seeds, max_batch=512)
    wall = time.perf_counter() - t0
    fovs = sum(int(r.counters["fov_evaluations_total"]) for r in results)
    log.info(
        "%d blocks: %d FOVs in %.1f s (%.1f FOV/s, %d model calls)",
        len(fills), fovs, wall, fovs / max(wall, 1e-9), predictor.model_calls,
    )  # fmt: skip
    extra = {
        "device": str(device),
        "precision": predictor.precision,
        "max_objects": max_objects,
        "blocks_filled_together": len(fills),
        "fill_workers": workers,
    }
    return [
        write_block_fill(f, r, dataset, loaded, extra, seg, cnt)
        for f, r, seg, cnt in zip(fills, results, segmentation_h5s, counters_jsons)
    ]
