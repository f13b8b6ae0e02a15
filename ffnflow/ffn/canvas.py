"""The inference canvas: flood-fills objects one seed at a time with the reference semantics.

This follows google/ffn's ``Canvas``: the predicted object mask (POM) is kept in logit
space, unknown voxels enter a forward pass as ``logit(pad_value)``, a new object starts as
``logit(init_activation)`` at its seed, every forward pass overwrites the POM inside its
FOV, the FOV moves by the face-max policy, and a finished object is committed where its
POM reaches ``segment_threshold`` on voxels no earlier object owns (first come wins).
Arrays are z, y, x; positions are voxel indices into the canvas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logit
from tqdm import tqdm

from ffnflow.errors import InputError
from ffnflow.ffn.movement import FaceMaxMovement

if TYPE_CHECKING:  # torch is imported by the predictor only
    from ffnflow.ffn.predictor import FovPredictor

Zyx = tuple[int, int, int]


@dataclass(frozen=True)
class InferenceOptions:
    """Flood-filling options; probabilities in 0..1, sizes in voxels (z, y, x).

    ``disco_seed_threshold``: when >= 0 and more than this fraction of a predicted FOV
    reaches the move threshold, voxels that were below 0.5 may not rise (the reference's
    "disconnected seed" bias towards split errors; its default, 0, is on). Negative: off.
    """

    init_activation: float = 0.95
    pad_value: float = 0.05
    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_segment_size: int = 1000
    min_boundary_dist_zyx: tuple[int, int, int] = (1, 1, 1)
    disco_seed_threshold: float = 0.0

    def __post_init__(self) -> None:
        for name in ("init_activation", "pad_value", "move_threshold", "segment_threshold"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise InputError(f"ffn.inference.{name}: {value} is not a probability in (0, 1)")
        if self.min_segment_size < 0:
            raise InputError(f"ffn.inference.min_segment_size: {self.min_segment_size} < 0")
        object.__setattr__(
            self, "min_boundary_dist_zyx", tuple(int(v) for v in self.min_boundary_dist_zyx)
        )


@dataclass
class SegmentationResult:
    """Labels (uint64, z, y, x; 0 = unlabelled), counters and the seed of every segment."""

    labels: np.ndarray
    counters: dict[str, float]
    origins: dict[int, Zyx] = field(default_factory=dict)


COUNTER_NAMES = (
    "seeds_total",
    "seeds_skipped_border",
    "seeds_skipped_segmented",
    "seeds_skipped_masked",
    "seeds_rejected_boundary",
    "seeds_tried",
    "seeds_rejected_weak",
    "seeds_rejected_small",
    "seeds_accepted",
    "fov_evaluations",
    "voxels_segmented",
    "voxels_overlapping",
)


def fov_input(old_logits: np.ndarray, pad_logit: np.float32) -> np.ndarray:
    """The POM a forward pass sees: the current logits, ``pad_logit`` where never predicted."""
    return np.where(np.isnan(old_logits), pad_logit, old_logits)


def merge_prediction(
    old_logits: np.ndarray, logits: np.ndarray, options: InferenceOptions, move_logit: float
) -> np.ndarray:
    """The POM logits to store for a FOV after a forward pass (``logits`` is modified).

    Applies the reference's disconnected-seed rule (see :class:`InferenceOptions`).
    """
    threshold = options.disco_seed_threshold
    if threshold >= 0 and np.mean(logits >= move_logit) > threshold:
        with np.errstate(invalid="ignore"):
            frozen = (old_logits < 0.0) & (logits > old_logits)  # logit(0.5) == 0; NaN -> False
        logits[frozen] = old_logits[frozen]
    return logits


class CanvasBase:
    """What every flood-filling engine over one image volume shares.

    Holds the image, the masks, the committed segmentation, the rejected seeds and the
    counters, and decides the two things that depend on earlier objects: whether a seed
    may start (:meth:`seed_rejection`) and what a finished object adds to the segmentation
    (:meth:`_conclude`). Engines differ only in how they run the forward passes.

    ``image`` is the normalised image (float32, z, y, x). ``predictor`` evaluates FOVs
    (anything with ``predict``, ``fov_size_zyx`` and ``deltas_zyx`` like
    :class:`FovPredictor`). ``movement_mask`` (bool, True = forbidden) keeps FOV centres
    and seeds out and its voxels unlabelled; ``seed_mask`` only forbids seeds.
    """

    def __init__(
        self,
        image: np.ndarray,
        predictor: FovPredictor,
        options: InferenceOptions,
        movement_mask: np.ndarray | None = None,
        seed_mask: np.ndarray | None = None,
    ) -> None:
        if image.ndim != 3:
            raise InputError(f"canvas image: expected 3D z,y,x, got shape {image.shape}")
        for name, mask in (("movement_mask", movement_mask), ("seed_mask", seed_mask)):
            if mask is not None and mask.shape != image.shape:
                raise InputError(f"{name}: shape {mask.shape} != image shape {image.shape}")
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        self.shape = self.image.shape
        self.predictor = predictor
        self.options = options
        self.movement_mask = movement_mask
        self.seed_mask = seed_mask
        self.fov_size = np.array(predictor.fov_size_zyx)
        self.margin = self.fov_size // 2
        self._margin = tuple(int(m) for m in self.margin)
        self.init_logit = float(logit(options.init_activation))
        self.pad_logit = np.float32(logit(options.pad_value))
        self.move_logit = float(logit(options.move_threshold))
        self.segment_logit = float(logit(options.segment_threshold))
        self.segmentation = np.zeros(self.shape, dtype=np.int64)
        self.rejected_seeds: set[Zyx] = set()
        self.origins: dict[int, Zyx] = {}
        self.counters: dict[str, float] = {name: 0 for name in COUNTER_NAMES}

    # -- positions -------------------------------------------------------------------------
    def _blocked_for_movement(self) -> Callable[[Zyx], bool] | None:
        """Where no FOV may be centred (``movement_mask``, and outside the canvas), for
        :class:`FaceMaxMovement`; None without a movement mask."""
        mask = self.movement_mask
        if mask is None:
            return None
        shape = mask.shape

        def blocked(pos: Zyx) -> bool:
            return not all(0 <= p < n for p, n in zip(pos, shape)) or bool(mask[pos])

        return blocked

    def has_context(self, pos: Zyx) -> bool:
        """Whether a full FOV fits around ``pos``."""
        # Plain ints: this runs for every candidate position.
        return all(m <= p < n - m for p, m, n in zip(pos, self._margin, self.shape))

    def _fov_slices(self, pos: Zyx) -> tuple[slice, slice, slice]:
        start = np.asarray(pos) - self.margin
        return tuple(slice(int(s), int(s + n)) for s, n in zip(start, self.fov_size))

    def _too_close_to_segment(self, pos: Zyx) -> bool:
        mbd = self.options.min_boundary_dist_zyx
        box = tuple(slice(max(int(p) - d, 0), int(p) + d + 1) for p, d in zip(pos, mbd))
        return bool(np.any(self.segmentation[box] > 0))

    # -- seeds -----------------------------------------------------------------------------
    def seed_rejection(self, pos: Zyx) -> str | None:
        """The counter naming why ``pos`` may not start an object now, or None if it may.

        Reads the current segmentation and rejected seeds, changes nothing. Both only
        grow, so a seed refused now is refused at any later time (for some reason).
        """
        if not self.has_context(pos):
            return "seeds_skipped_border"
        if self.segmentation[pos] > 0 or pos in self.rejected_seeds:
            return "seeds_skipped_segmented"
        if (self.movement_mask is not None and self.movement_mask[pos]) or (
            self.seed_mask is not None and self.seed_mask[pos]
        ):
            return "seeds_skipped_masked"
        if self._too_close_to_segment(pos):
            return "seeds_rejected_boundary"
        return None

    def _refuse_seed(self, pos: Zyx, reason: str) -> None:
        self.counters[reason] += 1
        if reason == "seeds_rejected_boundary":
            self.rejected_seeds.add(pos)

    # -- finishing an object ---------------------------------------------------------------
    def _conclude(
        self,
        start: Zyx,
        min_pos: np.ndarray,
        max_pos: np.ndarray,
        read_pom: Callable[[tuple[slice, slice, slice]], np.ndarray],
    ) -> int:
        """Accept or reject a finished object; returns its new segment id or 0.

        ``min_pos``/``max_pos`` bound the FOV centres it visited; ``read_pom`` returns its
        POM logits over a slice of the canvas (NaN where never predicted).
        """
        c = self.counters
        if read_pom(tuple(slice(int(v), int(v) + 1) for v in start))[0, 0, 0] < self.move_logit:
            c["seeds_rejected_weak"] += 1
            self.rejected_seeds.add(start)
            return 0
        segment_id = self._commit(start, min_pos, max_pos, read_pom)
        if segment_id:
            c["seeds_accepted"] += 1
        else:
            self.rejected_seeds.add(start)
        return segment_id

    def _commit(
        self,
        start: Zyx,
        min_pos: np.ndarray,
        max_pos: np.ndarray,
        read_pom: Callable[[tuple[slice, slice, slice]], np.ndarray],
    ) -> int:
        """Turn the POM of the finished object into a segment; returns its id or 0."""
        half = self.fov_size // 2
        lo = np.maximum(min_pos - half, 0)
        hi = np.minimum(max_pos + half + 1, self.shape)
        sel = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        mask = read_pom(sel) >= self.segment_logit
        raw_voxels = int(mask.sum())
        mask &= self.segmentation[sel] <= 0
        if self.movement_mask is not None:
            mask &= ~self.movement_mask[sel]
        voxels = int(mask.sum())
        if voxels < self.options.min_segment_size:
            self.counters["seeds_rejected_small"] += 1
            return 0
        segment_id = len(self.origins) + 1
        self.segmentation[sel][mask] = segment_id
        self.origins[segment_id] = tuple(int(v) for v in start)
        self.counters["voxels_segmented"] += voxels
        self.counters["voxels_overlapping"] += raw_voxels - voxels
        return segment_id

    def _result(self) -> SegmentationResult:
        labels = np.maximum(self.segmentation, 0).astype(np.uint64)
        return SegmentationResult(
            labels=labels, counters=dict(self.counters), origins=dict(self.origins)
        )


class Canvas(CanvasBase):
    """Flood-filling state over one image volume: one object at a time, as the reference.

    Arguments as :class:`CanvasBase`.
    """

    def __init__(
        self,
        image: np.ndarray,
        predictor: FovPredictor,
        options: InferenceOptions,
        movement_mask: np.ndarray | None = None,
        seed_mask: np.ndarray | None = None,
    ) -> None:
        super().__init__(image, predictor, options, movement_mask, seed_mask)
        self.movement = FaceMaxMovement(
            predictor.deltas_zyx, self.move_logit, self._blocked_for_movement()
        )
        # POM of the object being filled, logits; NaN = not predicted yet.
        self.pom = np.full(self.shape, np.nan, dtype=np.float32)
        self._pom_dirty: tuple[np.ndarray, np.ndarray] | None = None
        self._min_pos = np.zeros(3, dtype=np.int64)
        self._max_pos = np.zeros(3, dtype=np.int64)

    def _is_valid_move(self, pos: Zyx) -> bool:
        if self.pom[pos] < self.move_logit:  # NaN (never predicted) passes, as in the reference
            return False
        return self.has_context(pos) and self.segmentation[pos] <= 0

    # -- one object ------------------------------------------------------------------------
    def _reset_pom(self, start: Zyx) -> None:
        if self._pom_dirty is not None:
            lo, hi = self._pom_dirty
            self.pom[tuple(slice(a, b) for a, b in zip(lo, hi))] = np.nan
        self.pom[start] = self.init_logit
        self._pom_dirty = (np.asarray(start), np.asarray(start) + 1)

    def update_at(self, pos: Zyx) -> np.ndarray:
        """Run one forward pass centred at ``pos``; write and return the new POM logits."""
        sel = self._fov_slices(pos)
        old = self.pom[sel]
        logits = self.predictor.predict(
            self.image[sel][None], fov_input(old, self.pad_logit)[None]
        )[0]
        self.counters["fov_evaluations"] += 1
        logits = merge_prediction(old, logits, self.options, self.move_logit)
        self.pom[sel] = logits
        lo = np.array([s.start for s in sel])
        hi = np.array([s.stop for s in sel])
        dlo, dhi = self._pom_dirty
        self._pom_dirty = (np.minimum(dlo, lo), np.maximum(dhi, hi))
        return logits

    def segment_at(self, start: Zyx) -> int:
        """Flood-fill one object from ``start``; returns the number of forward passes."""
        self._reset_pom(start)
        self.movement.reset(start)
        self._min_pos = np.array(start)
        self._max_pos = np.array(start)
        iterations = 0
        for pos in self.movement.positions(self._is_valid_move):
            if self.pom[start] < self.move_logit:
                break  # the seed itself got too weak
            if self.movement_mask is not None and self.movement_mask[pos]:
                continue
            logits = self.update_at(pos)
            self._min_pos = np.minimum(self._min_pos, pos)
            self._max_pos = np.maximum(self._max_pos, pos)
            iterations += 1
            self.movement.update(logits, pos)
        return iterations

    # -- all seeds -------------------------------------------------------------------------
    def try_seed(self, pos: Zyx) -> int:
        """Attempt one seed; returns the new segment id, or 0 if skipped or rejected."""
        self.counters["seeds_total"] += 1
        reason = self.seed_rejection(pos)
        if reason is not None:
            self._refuse_seed(pos, reason)
            return 0
        self.counters["seeds_tried"] += 1
        if self.segment_at(pos) <= 0:
            return 0
        return self._conclude(pos, self._min_pos, self._max_pos, self.pom.__getitem__)

    def segment_all(self, seeds: Iterable[Zyx], progress: bool = False) -> SegmentationResult:
        """Flood-fill from every seed in order (z, y, x voxel positions in this canvas)."""
        seeds = [tuple(int(v) for v in s) for s in seeds]
        t0 = time.perf_counter()
        bar = tqdm(seeds, desc="seeds", unit="seed", disable=not progress, mininterval=2.0)
        for pos in bar:
            self.try_seed(pos)
            bar.set_postfix(
                segments=int(self.counters["seeds_accepted"]),
                fovs=int(self.counters["fov_evaluations"]),
                refresh=False,
            )
        self.counters["wall_s"] = round(time.perf_counter() - t0, 3)
        return self._result()
