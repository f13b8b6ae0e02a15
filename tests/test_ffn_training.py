"""FFN training: partitions, balanced sampling, augmentation, the loop, checkpoints, resume."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from ffnflow.baselines import seeded_watershed
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import ModelArch, load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.ffn.training.augment import AugmentOptions, augment_example
from ffnflow.ffn.training.coordinates import (
    ExampleCoordinates,
    example_margin,
    load_examples,
    region_coordinates,
    save_examples,
)
from ffnflow.ffn.training.examples import TrainingVolume
from ffnflow.ffn.training.moves import example_offsets, fov_shifts, next_move
from ffnflow.ffn.training.partitions import EXCLUDED, compute_partitions, object_fraction
from ffnflow.ffn.training.run import TrainingInterrupted, train_ffn
from ffnflow.ffn.training.sampler import BalancedSampler
from ffnflow.ffn.training.trainer import Trainer, TrainingOptions

TINY_ARCH = ModelArch(depth=2, features=8, fov_size_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))
THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def voronoi_cells(shape=(32, 32, 32), n=12, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic EM: Voronoi cells (labels 1..n) and an image bright inside, dark on the
    cell boundaries, with noise (normalised units, raw uint8 128 +- 33 style)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, shape, size=(n, 3))
    grid = np.stack(np.indices(shape), axis=-1).reshape(-1, 1, 3)
    labels = (
        (np.argmin(((grid - points) ** 2).sum(-1), axis=1) + 1).reshape(shape).astype(np.uint32)
    )
    boundary = np.zeros(shape, bool)
    for axis in range(3):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi = [slice(None)] * 3
        hi[axis] = slice(1, None)
        boundary[tuple(lo)] |= diff
        boundary[tuple(hi)] |= diff
    raw = np.where(boundary, 70.0, 170.0) + rng.normal(0, 10, shape)
    return np.clip(raw, 0, 255).astype(np.uint8), labels


def tiny_training_set(shape=(32, 32, 32), seed=0):
    raw, labels = voronoi_cells(shape, seed=seed)
    margin = example_margin(TINY_ARCH.fov_size_zyx, TINY_ARCH.deltas_zyx)
    coords, partition = region_coordinates(labels, (0, 0, 0), margin, THRESHOLDS, 50, 10**6)
    volume = TrainingVolume("synthetic", raw, labels, (0, 0, 0))
    return volume, ExampleCoordinates("synthetic", coords, partition)


def tiny_options(**kw) -> TrainingOptions:
    defaults = {
        "arch": TINY_ARCH,
        "steps": 12,
        "batch_size": 2,
        "device": "cpu",
        "checkpoint_every": 5,
        "validate_every": 0,
        "log_every": 1,
    }
    return TrainingOptions(**{**defaults, **kw})


# -- partitions and sampling ----------------------------------------------------------------


def test_object_fraction_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(9, 10, 11)).astype(np.uint32)
    labels[2:7, 3:8, 1:9] = 5
    r = (2, 1, 3)
    got = object_fraction(labels, r)
    assert got.shape == (5, 8, 5)
    for z, y, x in np.ndindex(got.shape):
        c = (z + r[0], y + r[1], x + r[2])
        box = labels[z : z + 2 * r[0] + 1, y : y + 2 * r[1] + 1, x : x + 2 * r[2] + 1]
        if labels[c] == 0:
            assert np.isnan(got[z, y, x])
        else:
            assert got[z, y, x] == pytest.approx(np.mean(box == labels[c]))


def test_partitions_exclude_border_background_and_small_objects():
    labels = np.ones((20, 20, 20), np.uint32)
    labels[:, :, 10:] = 2
    labels[8:10, 8:10, 2:4] = 3  # 8 voxels: below min_object_voxels
    labels[12:14, 12:14, 12:14] = 0
    parts = compute_partitions(labels, (3, 3, 3), THRESHOLDS, min_object_voxels=100)
    assert (parts[:3] == EXCLUDED).all() and (parts[-3:] == EXCLUDED).all()
    assert (parts[8:10, 8:10, 2:4] == EXCLUDED).all() and (
        parts[12:14, 12:14, 12:14] == EXCLUDED
    ).all()
    # Deep inside an object (far from the x = 10 face) every box voxel is the object.
    assert parts[10, 10, 5] == len(THRESHOLDS)
    # At the face between the two halves, a box holds 4/7 or 3/7 of the centre's object.
    assert parts[10, 5, 9] == np.digitize(4 / 7, THRESHOLDS) and parts[10, 5, 10] == np.digitize(
        4 / 7, THRESHOLDS
    )


def test_sampling_is_balanced_over_partitions_and_keeps_fovs_inside():
    volume, centres = tiny_training_set((40, 40, 40))
    sizes = centres.counts()
    assert len(sizes) >= 8 and max(sizes.values()) > 20 * min(sizes.values())  # very unequal
    sampler = BalancedSampler([centres])
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng)[1] for _ in range(200 * len(sizes))]
    lookup = {tuple(c): p for c, p in zip(centres.coords.tolist(), centres.partition.tolist())}
    counts = np.bincount([lookup[d] for d in draws], minlength=max(sizes) + 1)[sorted(sizes)]
    assert counts.min() > 0.7 * 200 and counts.max() < 1.3 * 200
    margin = np.array(example_margin(TINY_ARCH.fov_size_zyx, TINY_ARCH.deltas_zyx))
    coords = centres.coords
    assert (coords >= margin).all() and (coords < np.array(volume.raw.shape) - margin).all()


def test_examples_file_round_trip_and_mismatch(tmp_path):
    _, centres = tiny_training_set()
    centres.meta = {"margin_zyx": [6, 6, 6]}
    save_examples(tmp_path / "e.npz", centres)
    back = load_examples(tmp_path / "e.npz", expect={"margin_zyx": (6, 6, 6)})
    assert np.array_equal(back.coords, centres.coords) and np.array_equal(
        back.partition, centres.partition
    )
    with pytest.raises(InputError, match="margin_zyx"):
        load_examples(tmp_path / "e.npz", expect={"margin_zyx": [8, 8, 8]})


# -- augmentation and moves -----------------------------------------------------------------


def test_augmentations_keep_image_and_labels_aligned():
    _, labels = voronoi_cells((15, 15, 15), n=6)
    geometric = AugmentOptions(
        intensity=0, missing_section=0, slipped_section=0, shifted_sections=1.0, max_shift=3
    )
    for k in range(30):
        image, out = augment_example(
            labels.astype(np.float32), labels, np.random.default_rng(k), geometric
        )
        assert np.array_equal(image, out.astype(np.float32))
        assert out[7, 7, 7] == labels[7, 7, 7]
    imaging = AugmentOptions(
        reflect=False,
        transpose_yx=False,
        intensity=0.2,
        missing_section=1.0,
        slipped_section=1.0,
        shifted_sections=0,
    )
    image, out = augment_example(
        labels.astype(np.float32), labels, np.random.default_rng(0), imaging
    )
    assert np.array_equal(out, labels) and not np.array_equal(image, labels.astype(np.float32))


def test_fixed_moves_start_at_the_centre_and_need_a_confident_pom():
    shifts = fov_shifts((8, 8, 4))
    assert (
        len(shifts) == 26 == len(set(shifts)) and (0, 0, 0) not in shifts and (-8, 8, 4) in shifts
    )
    offsets = example_offsets((8, 8, 4), np.random.default_rng(0))
    assert offsets[0] == (0, 0, 0) and sorted(offsets[1:]) == sorted(shifts)
    remaining = [(0, 0, 8), (0, 8, 0), (8, 0, 0)]
    pom = {(0, 0, 8): -1.0, (0, 8, 0): 3.0, (8, 0, 0): 3.0}
    assert next_move(remaining, pom, 2.0) == (0, 8, 0) and remaining == [(8, 0, 0)]


# -- the loop -------------------------------------------------------------------------------


def test_one_step_changes_weights_and_lowers_the_loss_on_a_fixed_batch():
    torch.set_num_threads(1)
    volume, centres = tiny_training_set()
    trainer = Trainer(
        [volume], BalancedSampler([centres]), tiny_options(grad_clip=0, learning_rate=0.01)
    )
    slots = [trainer.batcher.slot(trainer.make_example(k)) for k in range(4)]
    batch = trainer.batcher.cut(slots, [(0, 0, 0)] * 4)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    _, loss0 = trainer.fit_batch(*batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    for _ in range(5):
        trainer.fit_batch(*batch)
    with torch.no_grad():
        after = torch.nn.functional.binary_cross_entropy_with_logits(
            trainer.forward(*batch[:2]), batch[2]
        )
    assert float(after) < float(loss0)


def test_loss_falls_over_steps_on_a_tiny_volume():
    torch.set_num_threads(1)
    volume, centres = tiny_training_set()
    trainer = Trainer(
        [volume],
        BalancedSampler([centres]),
        tiny_options(steps=150, batch_size=4, learning_rate=0.003),
    )
    losses = [float(trainer.train_step()) for _ in range(150)]
    assert trainer.next_example > 4  # examples were used up and replaced
    assert np.mean(losses[-30:]) < 0.8 * np.mean(losses[:30])


def test_predicted_logits_become_the_seed_of_the_next_fov():
    volume, centres = tiny_training_set()
    trainer = Trainer(
        [volume], BalancedSampler([centres]), tiny_options(batch_size=1, move_threshold=0.01)
    )
    trainer.train_step()
    slot = trainer.slots[0]
    with torch.no_grad():
        _, seed, _ = trainer.batcher.cut([slot], [(0, 0, 0)])
    # The seed inside the first FOV is no longer the initial 0.05 / 0.95 pattern.
    assert not torch.allclose(seed, torch.full_like(seed, float(np.log(0.05 / 0.95))))
    outside = slot.seed[0, 0, 0, 0]  # a box corner: no FOV covered it yet
    assert float(outside) == pytest.approx(float(np.log(0.05 / 0.95)))


def _run(tmp_path, name, options, centres, volume, **kw):
    out = tmp_path / name
    return train_ffn(
        [volume],
        [centres],
        options,
        out / "ffn.pt",
        out / "log.csv",
        out / "curve.png",
        out / "ffn.pt.state",
        {"image_mean": 128.0, "image_stddev": 33.0},
        (10.0, 10.0, 10.0),
        **kw,
    ), out


def test_resume_after_stop_is_bitwise_exact(tmp_path):
    torch.set_num_threads(1)
    volume, centres = tiny_training_set()
    options = tiny_options(steps=14, checkpoint_every=5, log_every=3)
    whole_rows, whole = _run(tmp_path, "whole", options, centres, volume)
    rows, split = _run(tmp_path, "split", options, centres, volume, stop_after=7)
    assert rows[-1]["step"] == 6 and not (split / "ffn.pt").exists()
    np.random.seed(123)  # resuming restores the global RNG states too
    torch.manual_seed(123)
    rows, _ = _run(tmp_path, "split", options, centres, volume)
    assert [r["step"] for r in rows] == [3, 6, 9, 12, 14]
    a, b = (
        load_checkpoint(whole / "ffn.pt").model.state_dict(),
        load_checkpoint(split / "ffn.pt").model.state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]


def test_sigterm_saves_the_state_and_the_run_resumes_exactly(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    volume, centres = tiny_training_set()
    options = tiny_options(steps=10, checkpoint_every=100)
    _, whole = _run(tmp_path, "whole", options, centres, volume)
    step = Trainer.train_step

    def step_then_sigterm(self):
        loss = step(self)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, "stopped", options, centres, volume)
    monkeypatch.setattr(Trainer, "train_step", step)
    state = torch.load(tmp_path / "stopped" / "ffn.pt.state", weights_only=True)
    assert state["training_state"]["trainer"]["step"] == 4
    _run(tmp_path, "stopped", options, centres, volume)
    a = load_checkpoint(whole / "ffn.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "stopped" / "ffn.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_loads_into_the_canvas(tmp_path):
    torch.set_num_threads(1)
    volume, centres = tiny_training_set()
    _, out = _run(tmp_path, "run", tiny_options(steps=4), centres, volume)
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step,examples,fovs")
    assert (out / "curve.png").stat().st_size > 1000
    for path in (out / "ffn.pt", out / "ffn.pt.state"):
        loaded = load_checkpoint(path)
        assert loaded.model.arch == TINY_ARCH and loaded.resolution_nm == (10.0, 10.0, 10.0)
        image = volume.normalize()
        canvas = Canvas(
            image,
            FovPredictor(loaded.model, device="cpu", threads=1),
            InferenceOptions(min_segment_size=10),
        )
        result = canvas.segment_all([(16, 16, 16), (10, 20, 12)])
        assert result.labels.shape == image.shape and result.counters["fov_evaluations"] > 0


# -- the baseline ---------------------------------------------------------------------------


def test_seeded_watershed_splits_cells_on_dark_membranes():
    raw, labels = voronoi_cells((24, 24, 24), n=4, seed=3)
    image = (raw.astype(np.float32) - 128) / 33
    seeds = np.array(
        [np.argwhere(labels == i).mean(0).round() for i in range(1, 5)], dtype=np.int64
    )
    seeds = np.array(
        [
            s if labels[tuple(s)] == i else np.argwhere(labels == i)[0]
            for i, s in enumerate(seeds, 1)
        ]
    )
    ws = seeded_watershed(image, seeds, sigma=0.5)
    assert ws.dtype == np.uint64 and set(np.unique(ws)) == {1, 2, 3, 4}
    assert np.mean(ws == labels) > 0.95


def test_time_limit_ends_the_run_with_a_checkpoint(tmp_path):
    volume, centres = tiny_training_set()
    rows, out = _run(
        tmp_path, "t", tiny_options(steps=10**6, max_minutes=1e-5, log_every=1000), centres, volume
    )
    assert 1 <= rows[-1]["step"] < 10**6 and (out / "ffn.pt").is_file()
    assert load_checkpoint(out / "ffn.pt").model.arch == TINY_ARCH
