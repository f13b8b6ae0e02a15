"""Agglomeration by resegmentation: re-run the FFN from both sides of every contact.

Follows the reference's ``resegmentation`` / ``resegmentation_analysis``:

1. :func:`decision_points`: every pair of segments A, B that touch (after growing labels by
   ``max_gap_voxels`` into unlabelled voxels, since FFN segments leave thin gaps) with a
   contact of at least ``min_contact_faces`` faces and both at least ``min_segment_voxels``
   gets a decision point on each separate contact of that size (at most
   ``max_points_per_pair``): the contact voxel farthest from everything that is neither A
   nor B (the middle of the widest part of the contact).
2. :func:`score_pair`: around the point, A and B are cleared (other segments stay and
   block the flood) and the FFN, its FOV centres kept within ``radius_zyx`` of the point
   (the FOV itself reaches further), floods once from a seed in A
   and once from a seed in B (the voxel deepest inside the segment near the point; retried
   from other seeds while the run recovers less than ``min_recovery`` of its segment):
   :func:`resegment_point`. Within the analysis box (``analysis_radius_zyx``) the pair is
   scored by the IoU of the two runs, each run's consistency with its own segment
   (fraction of it recovered) and the fraction of A∪B that neither run covers (deleted):
   :func:`compare_runs`, at the FFN's ``segment_threshold``.
3. :func:`merge_table`: pairs with a point of IoU >= ``merge_iou``, both consistencies >=
   ``min_consistency`` and deleted <= ``max_deleted`` are merged, strongest IoU first,
   with a union-find; two groups that both hold ``large_segment_voxels`` are joined only
   through a pair of two such segments, never through a smaller segment between them (a
   small fragment the FFN joins to both sides would otherwise merge two large neurons).
   The result is a relabel table applied with fastremap.

Arrays are z, y, x; points are voxel indices.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import cc3d
import edt
import fastremap
import numpy as np
from scipy.special import logit
from skimage.segmentation import expand_labels

from ffnflow.atomic import atomic_output
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.stitch import UnionFind

Zyx = tuple[int, int, int]


@dataclass(frozen=True)
class ResegmentationOptions:
    """Resegmentation settings; sizes and radii in voxels (z, y, x)."""

    max_gap_voxels: float = 2.0
    min_contact_faces: int = 25
    min_segment_voxels: int = 1000
    radius_zyx: tuple[int, int, int] = (12, 12, 12)
    analysis_radius_zyx: tuple[int, int, int] = (12, 12, 12)
    seed_search_radius: int = 10
    seed_exclusion_radius: int = 4
    max_seed_tries: int = 2
    min_recovery: float = 0.6
    merge_iou: float = 0.25
    min_consistency: float = 0.4
    max_deleted: float = 0.1
    large_segment_voxels: int = 20000
    min_bridge_fraction: float = 0.1
    max_points_per_pair: int = 4

    def __post_init__(self) -> None:
        for name in ("radius_zyx", "analysis_radius_zyx"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if any(a > r for a, r in zip(self.analysis_radius_zyx, self.radius_zyx)):
            raise InputError(
                f"agglomeration.resegmentation: analysis_radius_zyx {self.analysis_radius_zyx} "
                f"exceeds radius_zyx {self.radius_zyx}"
            )


@dataclass(frozen=True)
class DecisionPoint:
    """Where segments ``a`` < ``b`` touch: ``point_zyx`` (voxels) and contact size (faces)."""

    a: int
    b: int
    z: int
    y: int
    x: int
    contact_faces: int

    @property
    def point(self) -> Zyx:
        return (self.z, self.y, self.x)


@dataclass(frozen=True)
class PairScore(DecisionPoint):
    """The outcome of resegmenting one decision point (fractions 0..1)."""

    iou: float
    consistency_a: float
    consistency_b: float
    deleted: float
    seed_tries: int
    fov_evaluations: int
    merge: bool


def contact_faces(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every 6-neighbour face between two different nonzero labels of a z, y, x array.

    Returns ``pairs`` (N, 2; a < b) and the voxels on the face's two sides, ``first`` (the
    lower index) and ``second`` (N, 3 each; z, y, x), faces listed axis by axis.
    """
    keys, firsts, seconds = [], [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        u, v = labels[tuple(lo)], labels[tuple(hi)]
        face = (u != v) & (u > 0) & (v > 0)
        first = np.stack(np.nonzero(face), axis=1)
        keys.append(np.stack([np.minimum(u[face], v[face]), np.maximum(u[face], v[face])], 1))
        firsts.append(first)
        seconds.append(first + np.eye(3, dtype=first.dtype)[axis])
    return np.concatenate(keys), np.concatenate(firsts), np.concatenate(seconds)


def decision_points(
    labels: np.ndarray,
    options: ResegmentationOptions,
    resolution_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> list[DecisionPoint]:
    """Decision points of every touching pair of large-enough segments (one per separate
    contact, largest first), sorted by (a, b)."""
    if labels.ndim != 3:
        raise InputError(f"decision_points: expected 3D z,y,x labels, got {labels.shape}")
    labels = np.asarray(labels, dtype=np.uint64)
    grown = expand_labels(labels, options.max_gap_voxels) if options.max_gap_voxels > 0 else labels
    ids, counts = fastremap.unique(labels, return_counts=True)
    size = dict(zip((int(i) for i in ids), (int(c) for c in counts)))
    pairs, points, _ = contact_faces(grown)
    if len(pairs) == 0:
        return []
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs, points = pairs[order], points[order]
    bounds = np.flatnonzero(np.any(np.diff(pairs, axis=0) != 0, axis=1)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(pairs)]])
    out = []
    for start, stop in zip(starts, stops):
        a, b = int(pairs[start, 0]), int(pairs[start, 1])
        n_faces = int(stop - start)
        if n_faces < options.min_contact_faces:
            continue
        if min(size.get(a, 0), size.get(b, 0)) < options.min_segment_voxels:
            continue
        out.extend(_contact_points(grown, a, b, points[start:stop], options, resolution_nm))
    return out


def _contact_points(
    grown: np.ndarray,
    a: int,
    b: int,
    contact: np.ndarray,
    options: ResegmentationOptions,
    resolution_nm: tuple[float, float, float],
) -> list[DecisionPoint]:
    """The decision points of one pair: the deepest voxel of each separate contact (26-
    connected face voxels) with >= ``min_contact_faces`` faces, largest contact first, at
    most ``max_points_per_pair``; a pair whose contact is only fragments gets the deepest
    voxel of all of them. ``contact_faces`` is the size of the point's own contact."""
    lo = np.maximum(contact.min(axis=0) - 8, 0)
    hi = np.minimum(contact.max(axis=0) + 9, grown.shape)
    crop = grown[tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))]
    union = (crop == a) | (crop == b)
    depth = edt.edt(np.ascontiguousarray(union), anisotropy=resolution_nm, black_border=True)
    local = contact - lo
    values = depth[local[:, 0], local[:, 1], local[:, 2]]
    marks = np.zeros(crop.shape, dtype=np.uint8)
    marks[local[:, 0], local[:, 1], local[:, 2]] = 1
    pieces = cc3d.connected_components(marks, connectivity=26)
    piece = pieces[local[:, 0], local[:, 1], local[:, 2]].astype(np.int64)
    faces = np.bincount(piece)  # faces per contact (a voxel may hold up to 3 faces)
    order = sorted(
        (int(p) for p in np.flatnonzero(faces >= options.min_contact_faces)),
        key=lambda p: (-int(faces[p]), p),
    )
    if not order:
        groups = [(np.arange(len(contact)), len(contact))]
    else:
        groups = [
            (np.flatnonzero(piece == p), int(faces[p]))
            for p in order[: options.max_points_per_pair]
        ]
    out = []
    for members, n_faces in groups:
        best = contact[members[int(np.argmax(values[members]))]]  # first deepest, face order
        out.append(DecisionPoint(a, b, int(best[0]), int(best[1]), int(best[2]), n_faces))
    return out


def _box(center: Zyx, radius: Iterable[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(int(c) - int(r), 0), min(int(c) + int(r) + 1, int(n)))
        for c, r, n in zip(center, radius, shape)
    )


def _seed_candidates(segment: np.ndarray, center: Zyx, options: ResegmentationOptions) -> list[Zyx]:
    """Voxels of ``segment`` (bool) near ``center``, deepest first, spread apart."""
    depth = edt.edt(np.ascontiguousarray(segment), black_border=False)
    zz, yy, xx = np.indices(segment.shape, sparse=True)
    near = (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (
        xx - center[2]
    ) ** 2 <= options.seed_search_radius**2
    depth = np.where(near & segment, depth, 0.0)
    seeds: list[Zyx] = []
    r2 = options.seed_exclusion_radius**2
    for flat in np.argsort(-depth, axis=None, kind="stable"):
        if depth.flat[flat] <= 0 or len(seeds) >= options.max_seed_tries:
            break
        pos = tuple(int(v) for v in np.unravel_index(flat, segment.shape))
        if all(sum((p - s) ** 2 for p, s in zip(pos, seed)) > r2 for seed in seeds):
            seeds.append(pos)
    return seeds


@dataclass(frozen=True)
class LocalRuns:
    """The two local FFN runs of one decision point, cropped to its analysis box (z, y, x).

    ``logits_a`` / ``logits_b``: POM logits of the runs seeded in A and in B (NaN where
    no FOV predicted); ``is_a`` / ``is_b``: the original segments; ``claimable``: voxels a
    run may hold (not another segment, not a forbidden voxel).
    """

    logits_a: np.ndarray
    logits_b: np.ndarray
    is_a: np.ndarray
    is_b: np.ndarray
    claimable: np.ndarray
    seed_tries: int
    fov_evaluations: int


@dataclass(frozen=True)
class RunAgreement:
    """How two local runs agree in the analysis box (fractions 0..1)."""

    iou: float
    consistency_a: float
    consistency_b: float
    deleted: float


def resegment_point(
    image: np.ndarray,
    labels: np.ndarray,
    point: DecisionPoint,
    predictor,
    inference: InferenceOptions,
    options: ResegmentationOptions,
    movement_mask: np.ndarray | None = None,
) -> LocalRuns:
    """Flood once from a seed in A and once from a seed in B around one decision point.

    ``image`` normalised float32 and ``labels`` z, y, x; ``predictor`` is a
    :class:`~ffnflow.ffn.predictor.FovPredictor` (or alike). ``movement_mask`` (bool, z,
    y, x; True = forbidden), as in the FFN stage: no FOV centre goes there and its voxels
    belong to neither run (excluded voxels, a mirrored volume border).
    """
    margin = np.asarray(predictor.fov_size_zyx) // 2
    center = point.point
    read = _box(center, np.asarray(options.radius_zyx) + margin, labels.shape)
    read_lo = np.array([s.start for s in read])
    local_center = tuple(int(c - o) for c, o in zip(center, read_lo))
    lab = np.asarray(labels[read], dtype=np.uint64)
    img = np.ascontiguousarray(image[read], dtype=np.float32)
    is_a, is_b = lab == point.a, lab == point.b
    others = (lab > 0) & ~is_a & ~is_b
    # FOV centres stay inside the resegmentation box.
    outside = np.ones(lab.shape, dtype=bool)
    outside[_box(local_center, options.radius_zyx, lab.shape)] = False
    forbidden = np.zeros(lab.shape, dtype=bool)
    if movement_mask is not None:
        forbidden = np.asarray(movement_mask[read], dtype=bool)
        outside |= forbidden
    seedable = np.zeros(lab.shape, dtype=bool)  # inside the box, with a full FOV around
    seedable[tuple(slice(int(m), int(n - m)) for m, n in zip(margin, lab.shape))] = True
    seedable &= ~outside
    analysis = _box(local_center, options.analysis_radius_zyx, lab.shape)
    claimable = ~others & ~forbidden

    fovs = 0
    tries = 0
    runs = []
    for segment in (is_a, is_b):
        best, best_recovery = None, -1.0
        seg_in_box = segment[analysis]
        total = max(int(seg_in_box.sum()), 1)
        for seed in _seed_candidates(segment & seedable, local_center, options):
            tries += 1
            canvas = Canvas(img, predictor, inference, movement_mask=outside)
            canvas.segmentation[others] = 1  # other objects block the flood
            if canvas.seed_rejection(seed) is not None:
                continue
            canvas.segment_at(seed)
            fovs += int(canvas.counters["fov_evaluations"])
            logits = canvas.pom[analysis]
            region = (logits >= canvas.segment_logit) & claimable[analysis]
            recovery = float((region & seg_in_box).sum()) / total
            if recovery > best_recovery:
                best, best_recovery = logits.copy(), recovery
            if recovery >= options.min_recovery:
                break
        runs.append(best if best is not None else np.full(seg_in_box.shape, np.nan, np.float32))
    return LocalRuns(
        runs[0], runs[1], is_a[analysis], is_b[analysis], claimable[analysis], tries, fovs
    )


def compare_runs(runs: LocalRuns, threshold: float) -> RunAgreement:
    """Agreement of the two runs, each taken as its voxels with POM >= ``threshold`` (0..1):
    their IoU, each run's consistency with its own segment (fraction of it recovered) and
    the fraction of A|B that neither run covers (deleted)."""
    t = float(logit(threshold))
    with np.errstate(invalid="ignore"):
        ra = (runs.logits_a >= t) & runs.claimable
        rb = (runs.logits_b >= t) & runs.claimable
    union = int((ra | rb).sum())
    ab = runs.is_a | runs.is_b
    return RunAgreement(
        iou=float((ra & rb).sum()) / union if union else 0.0,
        consistency_a=float((ra & runs.is_a).sum()) / max(int(runs.is_a.sum()), 1),
        consistency_b=float((rb & runs.is_b).sum()) / max(int(runs.is_b.sum()), 1),
        deleted=float((ab & ~(ra | rb)).sum()) / max(int(ab.sum()), 1),
    )


def score_pair(
    image: np.ndarray,
    labels: np.ndarray,
    point: DecisionPoint,
    predictor,
    inference: InferenceOptions,
    options: ResegmentationOptions,
    movement_mask: np.ndarray | None = None,
) -> PairScore:
    """Resegment one decision point (:func:`resegment_point`, same arguments) and score
    the runs at the FFN's ``segment_threshold`` (:func:`compare_runs`)."""
    runs = resegment_point(image, labels, point, predictor, inference, options, movement_mask)
    agree = compare_runs(runs, inference.segment_threshold)
    return PairScore(
        point.a,
        point.b,
        point.z,
        point.y,
        point.x,
        point.contact_faces,
        round(agree.iou, 4),
        round(agree.consistency_a, 4),
        round(agree.consistency_b, 4),
        round(agree.deleted, 4),
        runs.seed_tries,
        runs.fov_evaluations,
        bool(
            passes_merge_thresholds(
                agree.iou, agree.consistency_a, agree.consistency_b, agree.deleted, options
            )
        ),
    )


def passes_merge_thresholds(
    iou: float,
    consistency_a: float,
    consistency_b: float,
    deleted: float,
    options: ResegmentationOptions,
) -> bool:
    """Whether one pair's scores call for a merge (``merge_iou``, ``min_consistency``,
    ``max_deleted``)."""
    return (
        iou >= options.merge_iou
        and min(consistency_a, consistency_b) >= options.min_consistency
        and deleted <= options.max_deleted
    )


def merge_table(
    scores: Iterable[PairScore],
    options: ResegmentationOptions,
    segment_voxels: dict[int, int],
) -> tuple[dict[int, int], list[PairScore]]:
    """Decide the merges of scored decision points; returns the relabel table (segment id
    -> a representative of its merged group) and every score with ``merge`` = applied.

    Points passing :func:`passes_merge_thresholds` join their pair, strongest IoU first (a
    pair with several contacts merges when one of its points passes). A join of two groups
    that both hold at least ``large_segment_voxels`` (0: no limit) is refused unless both
    segments of the pair itself are that large. ``min_bridge_fraction`` (0: off) also
    refuses a join whose smaller segment holds less than this fraction of the smaller of
    the two groups: a fragment then cannot join two groups much larger than itself,
    whatever their size.
    ``segment_voxels``: voxels per segment id.
    """
    scores = list(scores)
    large = options.large_segment_voxels
    uf = UnionFind()
    group_voxels: dict[int, int] = {}
    applied: set[int] = set()  # indices into scores
    passing = [
        i
        for i, s in enumerate(scores)
        if passes_merge_thresholds(s.iou, s.consistency_a, s.consistency_b, s.deleted, options)
    ]
    for i in sorted(passing, key=lambda i: (-scores[i].iou, scores[i].a, scores[i].b, i)):
        s = scores[i]
        ra, rb = uf.find(s.a), uf.find(s.b)
        if ra == rb:
            applied.add(i)
            continue
        va = group_voxels.get(ra, segment_voxels.get(s.a, 0))
        vb = group_voxels.get(rb, segment_voxels.get(s.b, 0))
        smaller = min(segment_voxels.get(s.a, 0), segment_voxels.get(s.b, 0))
        if large and va >= large and vb >= large and smaller < large:
            continue
        if smaller < options.min_bridge_fraction * min(va, vb):
            continue
        uf.union(s.a, s.b)
        group_voxels[uf.find(s.a)] = va + vb
        applied.add(i)
    table = uf.representatives()
    decided = [replace(s, merge=i in applied) for i, s in enumerate(scores)]
    return table, decided


def apply_merges(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Relabel merged segments to their representative (fastremap); a new array."""
    out = np.asarray(labels, dtype=np.uint64).copy()
    if table:
        remap = {int(k): int(v) for k, v in table.items()}
        fastremap.remap(out, remap, preserve_missing_labels=True, in_place=True)
    return out


def write_points_csv(path: str | Path, points: Iterable[DecisionPoint]) -> None:
    """Decision points as CSV (a, b, z, y, x, contact_faces), atomically."""
    _write_rows(path, [f.name for f in fields(DecisionPoint)], (asdict(p) for p in points))


def read_points_csv(path: str | Path) -> list[DecisionPoint]:
    """Decision points written by :func:`write_points_csv`."""
    return [DecisionPoint(**{k: int(v) for k, v in row.items()}) for row in _read_rows(path)]


def write_scores_csv(path: str | Path, scores: Iterable[PairScore]) -> None:
    """Scored pairs as CSV, one row per decision point, atomically."""
    _write_rows(path, [f.name for f in fields(PairScore)], (asdict(s) for s in scores))


def read_scores_csv(path: str | Path) -> list[PairScore]:
    """Scored pairs written by :func:`write_scores_csv`."""
    return [score_from_row(row) for row in _read_rows(path)]


def read_whole_score_rows(lines: Iterable[str]) -> list[PairScore]:
    """Scored pairs from CSV lines (header first) of :func:`write_scores_csv`'s columns,
    skipping rows cut off by a kill (a field missing or unreadable)."""
    scores = []
    for row in csv.DictReader(lines):
        if None in row.values() or None in row:
            continue
        try:
            scores.append(score_from_row(row))
        except (KeyError, TypeError, ValueError):
            continue
    return scores


def score_from_row(row: dict[str, str]) -> PairScore:
    """One scored pair from a CSV row of :func:`write_scores_csv`'s columns."""
    kw: dict[str, Any] = {}
    for f in fields(PairScore):
        value = row[f.name]
        kw[f.name] = (
            value == "True"
            if f.type == "bool"
            else (float(value) if f.type == "float" else int(value))
        )
    return PairScore(**kw)


def _write_rows(path: str | Path, columns: list[str], rows: Iterable[dict]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _read_rows(path: str | Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
