"""Stitching block segmentations into one: overlap matching, union-find, a relabel table.

Each block segments its read ROI with local ids ``1..n``. Block ids are made global by an
offset per block; two segments of neighbouring blocks are the same object when they share
enough voxels where the blocks' read ROIs overlap. Equivalences are joined with a
union-find; the final table maps every global id to a consecutive id in order of first
appearance (block grid order, then local id), so the result is deterministic.
"""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over integer ids (path halving, union by smaller root id)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def representatives(self) -> dict[int, int]:
        """Every id seen -> the smallest id of its set."""
        return {k: self.find(k) for k in list(self.parent)}


def overlap_matches(
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    min_overlap_voxels: int = 50,
    min_overlap_fraction: float = 0.5,
) -> list[tuple[int, int, int]]:
    """Segment pairs ``(a, b, voxels)`` that are the same object in an overlap region.

    ``labels_a`` and ``labels_b`` are the two blocks' labels over the same region (z, y, x).
    A pair matches when it shares at least ``min_overlap_voxels`` voxels and more than
    ``min_overlap_fraction`` of the smaller of the two segments within the region. With a
    fraction >= 0.5 a segment matches at most one segment of the other block, so one
    fragment cannot bridge two objects.
    """
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"overlap regions differ in shape: {labels_a.shape} vs {labels_b.shape}")
    a = labels_a.ravel().astype(np.uint64)
    b = labels_b.ravel().astype(np.uint64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    ids_a, size_a = np.unique(a[a > 0], return_counts=True)
    ids_b, size_b = np.unique(b[b > 0], return_counts=True)
    sa = size_a[np.searchsorted(ids_a, pairs[0])]
    sb = size_b[np.searchsorted(ids_b, pairs[1])]
    keep = (counts >= min_overlap_voxels) & (counts > min_overlap_fraction * np.minimum(sa, sb))
    return [
        (int(x), int(y), int(c)) for x, y, c in zip(pairs[0][keep], pairs[1][keep], counts[keep])
    ]


def relabel_table(
    id_offsets: list[int], id_counts: list[int], equivalences: list[tuple[int, int]]
) -> dict[int, int]:
    """Global id -> final consecutive id (1, 2, ...), 0 stays 0.

    Block ``k`` has local ids ``1..id_counts[k]``, global ids ``id_offsets[k] + local``.
    ``equivalences`` are pairs of global ids that are the same object.
    """
    uf = UnionFind()
    for a, b in equivalences:
        uf.union(a, b)
    table: dict[int, int] = {0: 0}
    final_of_root: dict[int, int] = {}
    for offset, count in zip(id_offsets, id_counts):
        for gid in range(offset + 1, offset + count + 1):
            root = uf.find(gid)
            if root not in final_of_root:
                final_of_root[root] = len(final_of_root) + 1
            table[gid] = final_of_root[root]
    return table
