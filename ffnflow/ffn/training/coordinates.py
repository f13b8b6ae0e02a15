"""Training centres of a dataset, by partition, and their cache file (google/ffn
``build_coordinates``).

A centre is a voxel whose FOV and every FOV move of training (``fov // 2 + deltas``
voxels around it, :func:`example_margin`) lie inside its region of interest; centres are
kept per partition (:mod:`.partitions`) so that sampling can balance them. Coordinates
are global z, y, x voxels of the dataset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.errors import InputError
from ffnflow.ffn.training.partitions import EXCLUDED, compute_partitions


def example_margin(fov_size_zyx: Sequence[int], deltas_zyx: Sequence[int]) -> tuple[int, int, int]:
    """Voxels from a centre to the edge of everything training reads around it (z, y, x):
    half a FOV plus one move."""
    return tuple(int(f) // 2 + int(d) for f, d in zip(fov_size_zyx, deltas_zyx))


@dataclass
class ExampleCoordinates:
    """Training centres of one dataset: ``coords`` (N, 3) int32 global z, y, x voxels,
    ``partition`` (N,) uint8, and ``meta`` (how they were made)."""

    dataset: str
    coords: np.ndarray
    partition: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[int, int]:
        """Number of centres per partition."""
        ids, counts = np.unique(self.partition, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}


def region_coordinates(
    labels: np.ndarray,
    offset_zyx: Sequence[int],
    margin_zyx: Sequence[int],
    thresholds: Sequence[float],
    min_object_voxels: int,
    max_per_partition: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (global z, y, x, int32) and their partitions in one region's ``labels``
    (whose first voxel is ``offset_zyx``); at most ``max_per_partition`` per partition, a
    fixed random subset."""
    parts = compute_partitions(labels, margin_zyx, thresholds, min_object_voxels)
    rng = np.random.default_rng(seed)
    coords, partition = [], []
    flat = parts.ravel()
    order = np.argsort(flat, kind="stable")
    values, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], len(flat))
    for value, a, b in zip(values, starts, ends):
        if value == EXCLUDED:
            continue
        idx = order[a:b]
        if len(idx) > max_per_partition:
            idx = np.sort(rng.choice(idx, size=max_per_partition, replace=False))
        coords.append(np.stack(np.unravel_index(idx, parts.shape), axis=1) + np.asarray(offset_zyx))
        partition.append(np.full(len(idx), value, dtype=np.uint8))
    if not coords:
        return np.zeros((0, 3), np.int32), np.zeros(0, np.uint8)
    return np.concatenate(coords).astype(np.int32), np.concatenate(partition)


def save_examples(path: str | Path, examples: ExampleCoordinates) -> None:
    """Write training centres as ``.npz`` (``coords``, ``partition``, ``meta`` JSON), atomically."""
    meta = json.dumps({"dataset": examples.dataset, **examples.meta}, sort_keys=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh, coords=examples.coords, partition=examples.partition, meta=np.array(meta)
        )


def load_examples(path: str | Path, expect: dict[str, Any] | None = None) -> ExampleCoordinates:
    """Read training centres written by :func:`save_examples`.

    ``expect``: meta entries the file must have (e.g. the margin it was made for); a
    mismatch is an :class:`InputError` naming the key.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"FFN training examples {path}: not found (run prepare-ffn-examples)")
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        coords, partition = f["coords"], f["partition"]
    for key, value in (expect or {}).items():
        if json.loads(json.dumps(value)) != meta.get(key):
            raise InputError(
                f"FFN training examples {path}: made with {key}={meta.get(key)!r}, the run needs "
                f"{value!r}; prepare them again"
            )
    dataset = meta.pop("dataset")
    return ExampleCoordinates(dataset, coords, partition, meta)
