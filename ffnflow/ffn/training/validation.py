"""Validation of a model in training on a held-out crop (never a training region).

Two measures: the loss of the training recipe on fixed examples of the crop (no
augmentation; every valid move of each example), and the quality of a short flood-filling
run with ffnflow's :class:`~ffnflow.ffn.canvas.Canvas` from PolicyPeaks seeds
(:func:`ffnflow.seeds.sobel_peak_seeds`): VI and adapted Rand error against the crop's
labels (:func:`ffnflow.metrics.segmentation_metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.ffn.training.coordinates import ExampleCoordinates, example_margin, region_coordinates
from ffnflow.ffn.training.examples import VALIDATION_STREAM, TrainingVolume, make_example
from ffnflow.ffn.training.moves import next_move
from ffnflow.ffn.training.partitions import DEFAULT_THRESHOLDS
from ffnflow.ffn.training.sampler import BalancedSampler
from ffnflow.ffn.training.trainer import Trainer
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import sobel_peak_seeds


@dataclass
class ValidationSet:
    """A held-out crop: its volume, the centres of its loss examples, the flood-filling
    seeds (crop-local z, y, x) and the inference options."""

    volume: TrainingVolume
    sampler: BalancedSampler | None
    seeds: np.ndarray
    inference: InferenceOptions
    n_examples: int = 16


def make_validation_set(
    volume: TrainingVolume,
    fov_size_zyx: Sequence[int],
    deltas_zyx: Sequence[int],
    inference: InferenceOptions,
    n_examples: int = 16,
    max_seeds: int = 0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_object_voxels: int = 1000,
    resolution_nm: Sequence[float] = (1.0, 1.0, 1.0),
) -> ValidationSet:
    """The validation set of a crop; ``max_seeds`` > 0 keeps that many seeds, evenly spread
    over the PolicyPeaks seeds' order."""
    margin = example_margin(fov_size_zyx, deltas_zyx)
    sampler = None
    if n_examples > 0 and all(s > 2 * m for s, m in zip(volume.labels.shape, margin)):
        coords, partition = region_coordinates(
            volume.labels, volume.offset_zyx, margin, thresholds, min_object_voxels, 10**6
        )
        if len(coords):
            sampler = BalancedSampler([ExampleCoordinates(volume.name, coords, partition)])
    seeds = sobel_peak_seeds(volume.normalize(), resolution_nm=tuple(resolution_nm))
    if max_seeds and len(seeds) > max_seeds:
        seeds = seeds[np.linspace(0, len(seeds) - 1, max_seeds).round().astype(int)]
    return ValidationSet(volume, sampler, seeds, inference, n_examples)


def validation_loss(trainer: Trainer, vset: ValidationSet) -> float | None:
    """Mean sigmoid cross-entropy over every FOV of the validation examples (all run as
    one batch of slots, each to the end of its moves)."""
    if vset.sampler is None:
        return None
    options = trainer.options.example_options(augment=False)
    batcher = trainer.batcher
    slots = [
        batcher.slot(
            make_example(
                [vset.volume], vset.sampler, options, trainer.options.seed, k, VALIDATION_STREAM
            )
        )
        for k in range(vset.n_examples)
    ]
    moves = [s.remaining.pop(0) for s in slots]
    total, count = 0.0, 0
    trainer.model.eval()
    with torch.no_grad():
        while slots:
            image, seed, target = batcher.cut(slots, moves)
            logits = trainer.forward(image, seed)
            total += float(F.binary_cross_entropy_with_logits(logits, target, reduction="sum"))
            count += target.numel()
            batcher.write_back(slots, moves, logits)
            pom = batcher.pom_at_offsets(slots)
            nxt = [next_move(s.remaining, p, batcher.move_logit) for s, p in zip(slots, pom)]
            slots = [s for s, m in zip(slots, nxt) if m is not None]
            moves = [m for m in nxt if m is not None]
    return total / max(count, 1)


def validation_inference(trainer: Trainer, vset: ValidationSet) -> dict[str, float]:
    """Flood-fill the crop from its seeds with the current weights; VI, ARAND and counts."""
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    t0 = time.perf_counter()
    trainer.model.eval()
    predictor = FovPredictor(
        trainer.model,
        device=str(trainer.device),
        threads=torch.get_num_threads(),
    )
    try:
        result = Canvas(vset.volume.normalize(), predictor, vset.inference).segment_all(vset.seeds)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    metrics = segmentation_metrics(vset.volume.labels, result.labels)
    metrics["fov_evaluations"] = int(result.counters["fov_evaluations"])
    metrics["wall_s"] = round(time.perf_counter() - t0, 2)
    return metrics
