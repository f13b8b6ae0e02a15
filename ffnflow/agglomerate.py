"""Consensus of two FFN passes and clean-up of a segmentation (label volumes, z, y, x).

- :func:`intersection_consensus`: the reference's ``split_segmentation_by_intersection``:
  voxels keep a label only where both passes labelled them, every distinct pair of labels
  becomes its own segment, and pieces below a size are dropped. Objects that either pass
  split stay split; voxels either pass left out stay out (it trades merges for splits).
- :func:`split_disconnected`: every 6-connected piece of a segment becomes its own segment.
- :func:`remove_dust`: segments below a size become unlabelled.
- :func:`fill_owned_gaps`: unlabelled pockets that one neighbouring segment clearly owns
  (it holds at least ``min_owner_fraction`` of the pocket's border) join that segment;
  excluded (masked) voxels are never filled and do not connect pockets.
- :func:`fill_membranes`: unlabelled voxels near segments (the membranes an FFN leaves
  between cells) go to the neighbour that floods them first in a seeded watershed of the
  image, so two cells meet at the darkest line between them.

Functions take arrays and return new arrays (the input is never modified); output ids are
consecutive from 1 in order of first appearance in C order, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import edt
import fastremap
import numpy as np
from skimage.segmentation import watershed

from ffnflow.errors import InputError


@dataclass(frozen=True)
class CleanupOptions:
    """Clean-up sizes in voxels; ``min_owner_fraction`` of a pocket's border faces."""

    min_segment_voxels: int = 1000
    max_gap_voxels: int = 5000
    min_owner_fraction: float = 0.9


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: shapes {a.shape} and {b.shape} differ")
    if a.ndim != 3:
        raise InputError(f"{what}: expected 3D z,y,x volumes, got {a.ndim}D")


def renumber(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids from 1 in order of first appearance (C order); 0 stays 0 (uint64)."""
    out, _ = fastremap.renumber(np.asarray(labels, dtype=np.uint64), start=1, preserve_zero=True)
    return out.astype(np.uint64, copy=False)


def intersection_consensus(a: np.ndarray, b: np.ndarray, min_segment_voxels: int) -> np.ndarray:
    """Split segmentation ``a`` by ``b``: every (a, b) label pair becomes its own segment.

    As the reference's ``split_segmentation_by_intersection``: voxels ``b`` leaves unlabelled
    stay in ``a``'s pieces (the pair (a, 0) is a piece), voxels ``a`` leaves unlabelled stay
    unlabelled, and pieces < ``min_segment_voxels`` voxels drop (uint64, z, y, x).
    """
    _check_same_shape(a, b, "consensus")
    a64 = np.asarray(a, dtype=np.uint64)
    b64 = np.asarray(b, dtype=np.uint64)
    if a64.max(initial=0) >= 2**32 or b64.max(initial=0) >= 2**32:
        raise InputError("consensus: segment ids must be < 2**32")
    pair = np.where(a64 > 0, (a64 << np.uint64(32)) | b64, np.uint64(0))
    return remove_dust(renumber(pair), min_segment_voxels)


def split_disconnected(labels: np.ndarray) -> np.ndarray:
    """Every 6-connected piece of every segment becomes its own segment (uint64)."""
    if labels.ndim != 3:
        raise InputError(f"split_disconnected: expected 3D z,y,x, got {labels.ndim}D")
    pieces = cc3d.connected_components(np.ascontiguousarray(labels), connectivity=6)
    return renumber(pieces)


def remove_dust(labels: np.ndarray, min_segment_voxels: int) -> np.ndarray:
    """Segments with fewer than ``min_segment_voxels`` voxels become 0; ids renumbered."""
    labels = np.asarray(labels, dtype=np.uint64)
    if min_segment_voxels <= 1:
        return renumber(labels)
    ids, counts = fastremap.unique(labels, return_counts=True)
    small = [int(i) for i, c in zip(ids, counts) if i != 0 and c < min_segment_voxels]
    if small:
        labels = fastremap.mask(labels, small)
    return renumber(labels)


def fill_owned_gaps(
    labels: np.ndarray,
    excluded: np.ndarray | None = None,
    max_gap_voxels: int = 5000,
    min_owner_fraction: float = 0.9,
) -> tuple[np.ndarray, int]:
    """Fill unlabelled pockets owned by one neighbour; returns labels and voxels filled.

    A pocket is a 6-connected component of unlabelled, not ``excluded`` voxels with at most
    ``max_gap_voxels`` voxels; its owner is the segment with the most shared faces, and it
    is filled when that segment holds >= ``min_owner_fraction`` of the faces the pocket
    shares with segments.
    """
    labels = np.asarray(labels, dtype=np.uint64)
    if excluded is not None:
        _check_same_shape(labels, excluded, "fill_owned_gaps: labels and exclusion mask")
    free = labels == 0
    if excluded is not None:
        free &= ~excluded.astype(bool)
    pockets, n_pockets = cc3d.connected_components(free, connectivity=6, return_N=True)
    if n_pockets == 0:
        return labels.copy(), 0
    offset = int(labels.max(initial=0))
    pocket_ids, pocket_sizes = fastremap.unique(pockets, return_counts=True)
    sizes = dict(zip((int(i) for i in pocket_ids), (int(c) for c in pocket_sizes)))
    combined = labels.copy()
    combined[free] = pockets[free].astype(np.uint64) + np.uint64(offset)
    border: dict[int, dict[int, float]] = {}
    for (x, y), faces in cc3d.contacts(combined, connectivity=6).items():
        lo, hi = (x, y) if x < y else (y, x)
        if lo == 0 or lo > offset or hi <= offset:
            continue  # not a segment-pocket pair
        border.setdefault(int(hi) - offset, {})[int(lo)] = float(faces)
    fill_table: dict[int, int] = {}
    for pocket, owners in border.items():
        if sizes.get(pocket, 0) > max_gap_voxels:
            continue
        owner, faces = max(owners.items(), key=lambda kv: (kv[1], -kv[0]))
        if faces >= min_owner_fraction * sum(owners.values()):
            fill_table[pocket] = owner
    if not fill_table:
        return labels.copy(), 0
    lut = np.zeros(n_pockets + 1, dtype=np.uint64)
    for pocket, owner in fill_table.items():
        lut[pocket] = owner
    filled = lut[pockets]
    out = labels.copy()
    take = free & (filled > 0)
    out[take] = filled[take]
    return out, int(take.sum())


def fill_membranes(
    labels: np.ndarray,
    image: np.ndarray,
    max_distance_voxels: float = 3.0,
    membrane: str = "dark",
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Give unlabelled voxels near segments to a neighbour; returns labels and voxels filled.

    Unlabelled, not ``excluded`` voxels at most ``max_distance_voxels`` (Euclidean, voxels)
    from a segment are flooded from the segments by a seeded watershed (6-connected) of
    ``image`` (z, y, x, the shape of ``labels``): voxels away from the membrane first, so
    two neighbours meet where the membrane is strongest. ``membrane``: ``"dark"`` (as in
    FIB-25 and most EM stains) or ``"bright"``. Labelled voxels keep their label; excluded
    voxels are neither filled nor crossed.
    """
    labels = np.asarray(labels, dtype=np.uint64)
    _check_same_shape(labels, np.asarray(image), "fill_membranes: labels and image")
    if excluded is not None:
        _check_same_shape(labels, excluded, "fill_membranes: labels and exclusion mask")
    if membrane not in ("dark", "bright"):
        raise InputError(f"fill_membranes: membrane must be 'dark' or 'bright', got {membrane!r}")
    if max_distance_voxels < 0:
        raise InputError(f"fill_membranes: max_distance_voxels {max_distance_voxels} < 0")
    unlabelled = labels == 0
    if not unlabelled.any() or unlabelled.all():
        return labels.copy(), 0
    # Distance of every unlabelled voxel to the nearest labelled one (voxels).
    distance = edt.edt(np.ascontiguousarray(unlabelled, dtype=np.uint8), black_border=False)
    reach = ~unlabelled | (distance <= max_distance_voxels)
    if excluded is not None:
        reach &= ~excluded.astype(bool)
    compact, mapping = fastremap.renumber(labels, start=1, preserve_zero=True)
    if len(mapping) >= 2**31:  # scikit-image's watershed labels are int32
        raise InputError(f"fill_membranes: {len(mapping)} segments, at most 2**31 - 1")
    image = np.asarray(image, dtype=np.float32)
    elevation = -image if membrane == "dark" else image
    flooded = watershed(elevation, markers=compact.astype(np.int32), mask=reach)
    back = {int(new): int(original) for original, new in mapping.items()}
    out = fastremap.remap(flooded.astype(np.uint64), back, in_place=True)
    return out, int(np.count_nonzero(unlabelled & (out > 0)))


def clean_up(
    labels: np.ndarray, options: CleanupOptions, excluded: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, int]]:
    """Split disconnected pieces, drop dust, fill owned gaps, drop dust again (uint64).

    Returns the cleaned labels and counters (segments before/after, voxels filled).
    """
    before = int(np.count_nonzero(fastremap.unique(labels)))
    pieces = split_disconnected(labels)
    n_pieces = int(pieces.max(initial=0))
    kept = remove_dust(pieces, options.min_segment_voxels)
    filled, n_filled = fill_owned_gaps(
        kept, excluded, options.max_gap_voxels, options.min_owner_fraction
    )
    final = remove_dust(filled, options.min_segment_voxels)
    if excluded is not None:
        final[excluded.astype(bool)] = 0
    return final, {
        "segments_in": before,
        "pieces": n_pieces,
        "segments_after_dust": int(kept.max(initial=0)),
        "voxels_filled": n_filled,
        "segments_out": int(final.max(initial=0)),
    }
