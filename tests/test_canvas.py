"""Canvas semantics on small synthetic volumes, with an oracle predictor and a tiny model."""

import numpy as np
import pytest
import torch

from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import ConvStack3D, ModelArch
from ffnflow.ffn.movement import FaceMaxMovement, face_max_moves
from ffnflow.ffn.predictor import FovPredictor
from tests.conftest import tube_image


class OraclePredictor:
    """Predicts 'object' (logit +3) wherever the image is bright, 'background' (-3) elsewhere."""

    fov_size_zyx = (9, 9, 9)
    deltas_zyx = (3, 3, 3)

    def __init__(self):
        self.centres = []

    def predict(self, image, pom_logits):
        return np.where(image > 0, 3.0, -3.0).astype(np.float32)


class RecordingCanvas(Canvas):
    """A canvas that remembers every FOV centre it evaluated."""

    def update_at(self, pos):
        self.predictor.centres.append(pos)
        return super().update_at(pos)


OPTIONS = InferenceOptions(min_segment_size=10)


def test_single_tube_is_filled_from_one_seed():
    image, tube = tube_image()
    canvas = Canvas(image, OraclePredictor(), OPTIONS)
    result = canvas.segment_all([(20, 20, 20)])
    assert result.counters["seeds_accepted"] == 1
    filled = result.labels > 0
    assert not (filled & ~tube).any()
    # FOV centres need 4 voxels of context, so the fill reaches z 1..36 completely.
    assert np.array_equal(filled[1:37], tube[1:37])
    assert result.labels.dtype == np.uint64
    assert result.origins == {1: (20, 20, 20)}
    # The FOV walked the tube along z in steps of the delta, both ways.
    assert result.counters["fov_evaluations"] >= 2 * (20 - 4) // 3


def test_seed_next_to_an_existing_segment_is_rejected():
    image, tube = tube_image()
    canvas = Canvas(image, OraclePredictor(), OPTIONS)
    # (20, 20, 24) is background right next to the tube (radius 3 around y = x = 20).
    result = canvas.segment_all([(20, 20, 20), (20, 20, 24), (10, 20, 20)])
    assert result.counters["seeds_accepted"] == 1
    assert result.counters["seeds_rejected_boundary"] == 1
    assert result.counters["seeds_skipped_segmented"] == 1  # (10, 20, 20) lies in the tube
    assert set(np.unique(result.labels)) == {0, 1}


def test_masked_voxels_are_never_entered_nor_labelled():
    image, tube = tube_image()
    mask = np.zeros_like(tube)
    mask[26:] = True
    predictor = OraclePredictor()
    canvas = RecordingCanvas(image, predictor, OPTIONS, movement_mask=mask)
    result = canvas.segment_all([(20, 20, 20), (30, 20, 20)])
    assert predictor.centres, "no FOV was evaluated"
    assert not any(mask[c] for c in predictor.centres)
    assert not result.labels[mask].any()
    assert result.counters["seeds_skipped_masked"] == 1
    assert np.array_equal(result.labels[1:22] > 0, tube[1:22])


def test_weak_seed_and_small_segment_are_rejected():
    image, tube = tube_image()
    dark = -np.ones_like(image)
    result = Canvas(dark, OraclePredictor(), OPTIONS).segment_all([(20, 20, 20)])
    assert result.counters["seeds_rejected_weak"] == 1 and not result.labels.any()
    big = InferenceOptions(min_segment_size=int(tube.sum()) + 1)
    result = Canvas(image, OraclePredictor(), big).segment_all([(20, 20, 20)])
    assert result.counters["seeds_rejected_small"] == 1 and not result.labels.any()


def test_seeds_without_full_fov_context_are_skipped():
    image, _ = tube_image()
    result = Canvas(image, OraclePredictor(), OPTIONS).segment_all([(2, 20, 20)])
    assert result.counters["seeds_skipped_border"] == 1
    assert result.counters["fov_evaluations"] == 0


def test_face_max_moves_follow_the_reference_order():
    logits = np.full((9, 9, 9), -5.0, dtype=np.float32)
    logits[1, 4, 4] = 4.0  # face z - 3 at the centre
    logits[7, 4, 5] = 5.0  # face z + 3, one voxel off-centre in x
    moves = face_max_moves(logits, (3, 3, 3), threshold_logit=2.0)
    assert moves == [(5.0, (3, 0, 1)), (4.0, (-3, 0, 0))]


def test_movement_visits_each_lattice_cell_once():
    movement = FaceMaxMovement((4, 4, 4), threshold_logit=0.0)
    movement.reset((10, 10, 10))
    assert movement.lattice_cell((10, 10, 10)) == (0, 0, 0)
    assert movement.lattice_cell((11, 11, 8)) == (0, 0, 0)
    assert movement.lattice_cell((10, 12, 10)) == (0, 1, 0)
    assert movement.lattice_cell((14, 10, 10)) == (1, 0, 0)
    visited = list(movement.positions(lambda p: True))
    assert visited == [(10, 10, 10)]
    movement.update(np.zeros((9, 9, 9), dtype=np.float32), (10, 10, 10))
    movement.queue.append((1.0, (11, 10, 10)))  # same cell as the start: skipped
    assert (11, 10, 10) not in list(movement.positions(lambda p: True))


def test_tiny_real_model_runs_through_the_canvas():
    torch.manual_seed(0)
    arch = ModelArch(depth=2, features=4, fov_size_zyx=(9, 9, 9), deltas_zyx=(3, 3, 3))
    predictor = FovPredictor(ConvStack3D(arch), device="cpu")
    image, _ = tube_image((20, 20, 20))
    result = Canvas(image, predictor, InferenceOptions(min_segment_size=0)).segment_all(
        [(10, 10, 10)]
    )
    assert result.counters["seeds_tried"] == 1
    assert result.counters["fov_evaluations"] == predictor.fov_evaluations >= 1


def test_options_reject_non_probabilities():
    with pytest.raises(ValueError, match="move_threshold"):
        InferenceOptions(move_threshold=1.5)


def test_mirrored_volume_border_lets_border_seeds_trace_inside_the_volume():
    from ffnflow.stages.segment import pad_volume_border

    image, tube = tube_image(shape=(12, 40, 40))  # thinner than two FOVs: all near the border
    seed = (2, 20, 20)
    plain = Canvas(image, OraclePredictor(), OPTIONS).segment_all([seed])
    assert plain.counters["seeds_skipped_border"] == 1 and not plain.labels.any()

    pad = [(4, 4), (0, 0), (0, 0)]  # the oracle's FOV radius, along z
    padded, mask = pad_volume_border(image, None, pad)
    assert padded.shape == (20, 40, 40) and mask[:4].all() and not mask[4:16].any()
    assert np.array_equal(padded[:4], image[3::-1])  # mirrored
    result = Canvas(padded, OraclePredictor(), OPTIONS, movement_mask=mask).segment_all(
        [(seed[0] + 4, *seed[1:])]
    )
    labels = result.labels[4:16]
    assert not result.labels[:4].any() and not result.labels[16:].any()
    assert np.array_equal(labels > 0, tube)
