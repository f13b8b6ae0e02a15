"""One training example: an image box around a sampled centre, its soft target and the
FOV moves to try.

The box spans everything the example's FOVs can read: ``fov + 2 * deltas`` voxels (z, y,
x) around the centre. The target is the centre voxel's object, softened to
``target_on`` / ``target_off`` (0.95 / 0.05 in the reference). Example ``k`` of a run is
a function of ``(seed, stream, k)`` alone, so a resumed run sees the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ffnflow.errors import InputError
from ffnflow.ffn.training.augment import AugmentOptions, augment_example
from ffnflow.ffn.training.coordinates import example_margin
from ffnflow.ffn.training.moves import Offset, example_offsets
from ffnflow.ffn.training.sampler import BalancedSampler

TRAIN_STREAM = 0
VALIDATION_STREAM = 1


@dataclass
class TrainingVolume:
    """A region of a dataset held in memory: ``raw`` and ``labels`` (z, y, x, same shape)
    whose first voxel is the dataset's global voxel ``offset_zyx``."""

    name: str
    raw: np.ndarray
    labels: np.ndarray
    offset_zyx: tuple[int, int, int]
    image_mean: float = 128.0
    image_stddev: float = 33.0

    def __post_init__(self) -> None:
        if self.raw.shape != self.labels.shape or self.raw.ndim != 3:
            raise InputError(
                f"training volume {self.name}: raw {self.raw.shape} and labels "
                f"{self.labels.shape} must be 3D z,y,x of the same shape"
            )
        self.offset_zyx = tuple(int(v) for v in self.offset_zyx)

    def normalize(self, raw: np.ndarray | None = None) -> np.ndarray:
        """``(raw - image_mean) / image_stddev`` as float32, of ``raw`` (default: the whole region)."""
        raw = self.raw if raw is None else raw
        return (raw.astype(np.float32) - np.float32(self.image_mean)) / np.float32(
            self.image_stddev
        )


@dataclass
class Example:
    """A training example: ``image`` (normalised, augmented) and ``target`` (soft) boxes,
    float32 z, y, x, and the ``offsets`` its FOVs try, in order."""

    index: int
    dataset: int
    centre_zyx: tuple[int, int, int]
    image: np.ndarray
    target: np.ndarray
    offsets: list[Offset]


@dataclass(frozen=True)
class ExampleOptions:
    """How examples are made; sizes in voxels, z, y, x."""

    fov_size_zyx: tuple[int, int, int]
    deltas_zyx: tuple[int, int, int]
    target_on: float = 0.95
    target_off: float = 0.05
    shuffle_moves: bool = True
    augment: AugmentOptions | None = field(default_factory=AugmentOptions)


def crop_box(volume: TrainingVolume, centre_zyx: Sequence[int], margin_zyx: Sequence[int]):
    """Raw and labels of the box of radius ``margin_zyx`` around a global centre."""
    local = np.asarray(centre_zyx) - np.asarray(volume.offset_zyx)
    lo, hi = local - np.asarray(margin_zyx), local + np.asarray(margin_zyx) + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(volume.raw.shape)):
        raise InputError(
            f"training centre {tuple(centre_zyx)} of {volume.name}: its box of radius "
            f"{tuple(margin_zyx)} leaves the region; were the examples made for another FOV?"
        )
    sel = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return volume.raw[sel], volume.labels[sel]


def make_example(
    volumes: Sequence[TrainingVolume],
    sampler: BalancedSampler,
    options: ExampleOptions,
    seed: int,
    index: int,
    stream: int = TRAIN_STREAM,
) -> Example:
    """Example ``index`` of stream ``stream`` (training or validation) of a run with ``seed``."""
    rng = np.random.default_rng([seed, stream, index])
    dataset, centre = sampler.draw(rng)
    volume = volumes[dataset]
    margin = example_margin(options.fov_size_zyx, options.deltas_zyx)
    raw, labels = crop_box(volume, centre, margin)
    image = volume.normalize(raw)
    if options.augment is not None:
        image, labels = augment_example(image, labels, rng, options.augment)
    mid = tuple(s // 2 for s in labels.shape)
    target = np.where(labels == labels[mid], options.target_on, options.target_off).astype(
        np.float32
    )
    offsets = example_offsets(options.deltas_zyx, rng if options.shuffle_moves else None)
    return Example(
        index, dataset, centre, np.ascontiguousarray(image, dtype=np.float32), target, offsets
    )
