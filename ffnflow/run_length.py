"""Expected run length (ERL) of a segmentation along ground-truth skeletons.

The paper's measure (Januszewski et al. 2018), computed as funlib.evaluate's
``expected_run_length``: every ground-truth object is skeletonised; each skeleton node is
looked up in the segmentation. An edge is *correct* when both its nodes lie in the same
segment, that segment is not 0 and it is not a *merging* segment (one that holds nodes of
more than one skeleton). A skeleton's run in a segment is the summed length of its correct
edges in that segment, and

    ERL = sum over skeletons and segments of run² / sum of skeleton lengths,

the expected length of error-free path from a random point on a random skeleton (nm).

``merge_min_nodes`` (default 1: funlib's definition) makes a segment *hold* a skeleton
only where at least that many of the skeleton's nodes lie in it, as the AxonEM
challenge's ERL does. Skeletons of dense ground truth (kimimaro) end on the object's
boundary, where segmentation and ground truth disagree by a voxel or two; with the strict
definition one such tip node makes a neighbouring segment "merging" and zeroes all its
runs.
Skeleton vertices are z, y, x in nm; voxel indices are z, y, x.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ffnflow.errors import InputError


@dataclass(frozen=True)
class Skeleton:
    """A skeleton: vertices (N, 3) in nm (z, y, x) and edges (M, 2) as vertex indices."""

    vertices_nm: np.ndarray
    edges: np.ndarray

    def edge_lengths_nm(self) -> np.ndarray:
        """Length of every edge, nm."""
        if len(self.edges) == 0:
            return np.zeros(0)
        a, b = self.vertices_nm[self.edges[:, 0]], self.vertices_nm[self.edges[:, 1]]
        return np.linalg.norm(a - b, axis=1)

    @property
    def cable_length_nm(self) -> float:
        """Total edge length, nm."""
        return float(self.edge_lengths_nm().sum())


@dataclass
class RunLengthResult:
    """ERL (nm) with the split and merge counts behind it.

    ``n_splits``: sum over skeletons of (segments they visit - 1), segment 0 excluded;
    ``n_merges``: sum over merging segments of (skeletons they hold - 1);
    ``n_omitted_nodes``: skeleton nodes on unlabelled voxels (segment 0).
    """

    erl_nm: float
    total_length_nm: float
    n_skeletons: int
    n_splits: int
    n_merges: int
    n_omitted_nodes: int
    merging_segments: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, float | int]:
        """The scalar figures, for a metrics JSON."""
        return {
            "erl_nm": self.erl_nm,
            "erl_skeleton_length_nm": self.total_length_nm,
            "erl_skeletons": self.n_skeletons,
            "erl_splits": self.n_splits,
            "erl_merges": self.n_merges,
            "erl_omitted_nodes": self.n_omitted_nodes,
        }


def expected_run_length(
    skeletons: Mapping[int, Skeleton],
    node_segments: Mapping[int, np.ndarray],
    merge_min_nodes: int = 1,
) -> RunLengthResult:
    """ERL of a segmentation given the segment id under every node of every skeleton.

    ``node_segments[k][i]`` is the segment at vertex ``i`` of skeleton ``k`` (0 = none).
    A segment merges skeletons when it holds ``merge_min_nodes`` or more nodes of each of
    at least two of them.
    """
    if merge_min_nodes < 1:
        raise InputError(f"expected_run_length: merge_min_nodes {merge_min_nodes} < 1")
    owners: dict[int, set[int]] = defaultdict(set)
    for key, segs in node_segments.items():
        if len(segs) != len(skeletons[key].vertices_nm):
            raise InputError(
                f"skeleton {key}: {len(segs)} node segments for "
                f"{len(skeletons[key].vertices_nm)} vertices"
            )
        for seg, count in zip(*np.unique(segs, return_counts=True)):
            if seg != 0 and count >= merge_min_nodes:
                owners[int(seg)].add(key)
    merging = sorted(seg for seg, keys in owners.items() if len(keys) > 1)
    merging_set = set(merging)

    total = 0.0
    squared_runs = 0.0
    n_splits = 0
    omitted = 0
    for key, skeleton in skeletons.items():
        segs = np.asarray(node_segments[key])
        lengths = skeleton.edge_lengths_nm()
        total += float(lengths.sum())
        visited = set(int(s) for s in np.unique(segs)) - {0}
        n_splits += max(len(visited) - 1, 0)
        omitted += int(np.count_nonzero(segs == 0))
        if len(skeleton.edges) == 0:
            continue
        sa, sb = segs[skeleton.edges[:, 0]], segs[skeleton.edges[:, 1]]
        correct = (sa == sb) & (sa != 0)
        if merging_set:
            correct &= ~np.isin(sa, merging)
        runs: dict[int, float] = defaultdict(float)
        for seg, length in zip(sa[correct], lengths[correct]):
            runs[int(seg)] += float(length)
        squared_runs += sum(r * r for r in runs.values())
    n_merges = sum(len(owners[s]) - 1 for s in merging)
    return RunLengthResult(
        erl_nm=squared_runs / total if total > 0 else 0.0,
        total_length_nm=total,
        n_skeletons=len(skeletons),
        n_splits=n_splits,
        n_merges=n_merges,
        n_omitted_nodes=omitted,
        merging_segments=merging,
    )


def skeletonize(
    labels: np.ndarray,
    resolution_nm: tuple[float, float, float],
    dust_voxels: int = 1000,
    scale: float = 1.5,
    const_nm: float = 300.0,
) -> dict[int, Skeleton]:
    """Skeletonise every object of a label volume (z, y, x) with kimimaro (TEASAR).

    Objects below ``dust_voxels`` are skipped; ``scale``/``const_nm`` are TEASAR's
    invalidation-ball parameters (radius = scale * boundary distance + const).
    """
    import kimimaro

    if labels.ndim != 3:
        raise InputError(f"skeletonize: expected a 3D z,y,x label volume, got {labels.shape}")
    raw = kimimaro.skeletonize(
        np.ascontiguousarray(labels),
        teasar_params={"scale": scale, "const": const_nm},
        anisotropy=tuple(float(r) for r in resolution_nm),
        dust_threshold=dust_voxels,
        fix_branching=True,
        fix_borders=True,
        progress=False,
        parallel=1,
    )
    return {
        int(k): Skeleton(np.asarray(s.vertices, dtype=np.float64), np.asarray(s.edges, np.int64))
        for k, s in raw.items()
        if len(s.vertices) > 0
    }


def node_segments(
    skeletons: Mapping[int, Skeleton],
    segmentation: np.ndarray,
    resolution_nm: tuple[float, float, float],
) -> dict[int, np.ndarray]:
    """The segment id under every skeleton vertex (vertices in nm, z, y, x)."""
    res = np.asarray(resolution_nm, dtype=np.float64)
    upper = np.asarray(segmentation.shape) - 1
    out = {}
    for key, skeleton in skeletons.items():
        idx = np.clip(np.rint(skeleton.vertices_nm / res).astype(np.int64), 0, upper)
        out[key] = segmentation[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def segmentation_run_length(
    segmentation: np.ndarray,
    skeletons: Mapping[int, Skeleton],
    resolution_nm: tuple[float, float, float],
    merge_min_nodes: int = 1,
) -> RunLengthResult:
    """ERL of ``segmentation`` (z, y, x) along ground-truth ``skeletons``
    (``merge_min_nodes``: see :func:`expected_run_length`)."""
    return expected_run_length(
        skeletons, node_segments(skeletons, segmentation, resolution_nm), merge_min_nodes
    )
