"""Partition-balanced sampling of training centres over one or more datasets.

Every draw picks a partition uniformly among those that have centres (pooled over all
datasets), then a centre uniformly within it, as google/ffn's ``build_coordinates``
oversampling does in expectation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ffnflow.errors import InputError
from ffnflow.ffn.training.coordinates import ExampleCoordinates


class BalancedSampler:
    """Draws ``(dataset index, centre z, y, x)`` from several datasets' training centres."""

    def __init__(self, example_sets: Sequence[ExampleCoordinates]) -> None:
        if not example_sets or not any(len(e.coords) for e in example_sets):
            raise InputError("FFN training: no training centres (are the objects large enough?)")
        self.coords = np.concatenate([e.coords for e in example_sets]).astype(np.int64)
        self.dataset = np.concatenate(
            [np.full(len(e.coords), i, dtype=np.int64) for i, e in enumerate(example_sets)]
        )
        partition = np.concatenate([e.partition for e in example_sets])
        self.order = np.argsort(partition, kind="stable")
        self.partitions, self.starts, self.counts = np.unique(
            partition[self.order], return_index=True, return_counts=True
        )

    def draw(self, rng: np.random.Generator) -> tuple[int, tuple[int, int, int]]:
        """One centre: its dataset index and global z, y, x voxel position."""
        p = int(rng.integers(len(self.partitions)))
        j = self.order[self.starts[p] + int(rng.integers(self.counts[p]))]
        return int(self.dataset[j]), tuple(int(v) for v in self.coords[j])
