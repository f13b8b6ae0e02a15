"""The block grid: how a large volume is cut into jobs.

A block has a *write ROI* (the voxels it owns in the final result; the write ROIs tile the
volume) and a *read ROI* (write ROI plus ``context`` voxels on every side, clipped to the
volume) that its job reads and segments. Block ids are ``z{i}_y{j}_x{k}`` (grid indices).
All sizes are voxels, z, y, x.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ffnflow.errors import InputError
from ffnflow.volumes import Roi

BLOCK_ID = re.compile(r"^z(\d+)_y(\d+)_x(\d+)$")


@dataclass(frozen=True)
class Block:
    """One block: grid index (z, y, x), write ROI and read ROI in global voxels."""

    index: tuple[int, int, int]
    write_roi: Roi
    read_roi: Roi

    @property
    def id(self) -> str:
        return "z{}_y{}_x{}".format(*self.index)


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block_shape`` with ``context`` covering a volume of ``volume_shape``."""

    volume_shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    context: tuple[int, int, int]

    def __post_init__(self) -> None:
        for name in ("volume_shape", "block_shape", "context"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3:
                raise InputError(f"block grid {name}: needs 3 values (z, y, x), got {value}")
            object.__setattr__(self, name, value)
        if min(self.block_shape) < 1 or min(self.context) < 0 or min(self.volume_shape) < 1:
            raise InputError(
                f"block grid: block shape {self.block_shape} must be >= 1 and context "
                f"{self.context} >= 0 for volume {self.volume_shape}"
            )

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Number of blocks along z, y, x."""
        return tuple(-(-v // b) for v, b in zip(self.volume_shape, self.block_shape))

    def block(self, index: Sequence[int]) -> Block:
        index = tuple(int(i) for i in index)
        if not all(0 <= i < n for i, n in zip(index, self.grid_shape)):
            raise InputError(f"block index {index} outside the grid {self.grid_shape}")
        volume = Roi.from_shape(self.volume_shape)
        offset = [i * b for i, b in zip(index, self.block_shape)]
        write = Roi(offset, self.block_shape).intersect(volume)
        return Block(index, write, write.grow(self.context).intersect(volume))

    def block_by_id(self, block_id: str) -> Block:
        match = BLOCK_ID.match(block_id)
        if not match:
            raise InputError(f"block id {block_id!r}: expected the form z<i>_y<j>_x<k>")
        index = [int(g) for g in match.groups()]
        if not all(0 <= i < n for i, n in zip(index, self.grid_shape)):
            raise InputError(f"block id {block_id}: outside the block grid {self.grid_shape}")
        return self.block(index)

    def __iter__(self) -> Iterator[Block]:
        """Blocks in z, y, x order of their grid index."""
        for index in itertools.product(*(range(n) for n in self.grid_shape)):
            yield self.block(index)

    def __len__(self) -> int:
        z, y, x = self.grid_shape
        return z * y * x

    @property
    def ids(self) -> list[str]:
        return [b.id for b in self]

    def overlapping(self, roi: Roi) -> Iterator[Block]:
        """Blocks whose read ROI intersects ``roi``, in grid order."""
        ranges = []
        for r0, r1, b, c, n in zip(
            roi.offset, roi.end, self.block_shape, self.context, self.grid_shape
        ):
            ranges.append(range(max(0, (r0 - c) // b), min(n - 1, (r1 + c - 1) // b) + 1))
        for index in itertools.product(*ranges):
            block = self.block(index)
            if not block.read_roi.intersect(roi).empty:
                yield block

    def neighbour_pairs(self) -> Iterator[tuple[Block, Block]]:
        """Pairs of distinct blocks whose read ROIs overlap, each pair once, in grid order."""
        for a in self:
            for b in self.overlapping(a.read_roi):
                if b.index > a.index:
                    yield a, b
