"""BatchedCanvas gives exactly the sequential Canvas's result, with several objects at once."""

import numpy as np
import pytest
import torch

from ffnflow.errors import InputError
from ffnflow.ffn.batched import BatchedCanvas, LocalPom, segment_canvases
from ffnflow.ffn.canvas import COUNTER_NAMES, Canvas, InferenceOptions
from ffnflow.ffn.model import ConvStack3D, ModelArch
from ffnflow.ffn.predictor import FovPredictor
from tests.conftest import tube_image
from tests.test_canvas import OraclePredictor

OPTIONS = InferenceOptions(min_segment_size=10)


class BatchOracle(OraclePredictor):
    """The oracle, remembering the size of every batch it was given."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def predict(self, image, pom_logits):
        self.batches.append(len(image))
        return super().predict(image, pom_logits)


class DecayPredictor:
    """Bright voxels get the logit at the FOV centre minus ``decay`` (never lowered).

    Objects then reach only a few FOVs from their seed, so neighbouring seeds in one tube
    give separate, overlapping segments: a later object's FOV path runs into an earlier
    object's segment without its seed being covered, which forces restarts.
    """

    fov_size_zyx = (9, 9, 9)
    deltas_zyx = (3, 3, 3)

    def __init__(self, decay):
        self.decay = decay

    def predict(self, image, pom_logits):
        centre = pom_logits[:, 4, 4, 4][:, None, None, None]
        grown = np.maximum(pom_logits, centre - self.decay)
        return np.where(image > 0, grown, -3.0).astype(np.float32)


class CountingDecayPredictor(DecayPredictor):
    """DecayPredictor, remembering the size of every batch it was given."""

    def __init__(self, decay):
        super().__init__(decay)
        self.batches = []

    def predict(self, image, pom_logits):
        self.batches.append(len(image))
        return super().predict(image, pom_logits)


def crossing_tubes(shape=(40, 40, 40), radius=3):
    """Three bright tubes along z, x and y that cross each other: (image, mask)."""
    z, y, x = np.indices(shape) / np.asarray(shape[0], dtype=float)  # in units of the side
    r = radius / shape[0]
    along_z = (y - 0.5) ** 2 + (x - 0.5) ** 2 <= r**2
    along_x = (z - 0.5) ** 2 + (y - 0.35) ** 2 <= r**2
    along_y = (z - 0.3) ** 2 + (x - 0.65) ** 2 <= r**2
    tubes = along_z | along_x | along_y
    return np.where(tubes, 1.0, -1.0).astype(np.float32), tubes


def assert_same_result(expected, got):
    assert np.array_equal(expected.labels, got.labels)
    assert expected.origins == got.origins
    assert {k: expected.counters[k] for k in COUNTER_NAMES} == {
        k: got.counters[k] for k in COUNTER_NAMES
    }


def tiny_model(seed=0):
    """A tiny convstack whose random weights get a bias towards following bright voxels."""
    torch.manual_seed(seed)
    model = ConvStack3D(
        ModelArch(depth=2, features=4, fov_size_zyx=(9, 9, 9), deltas_zyx=(3, 3, 3))
    )
    with torch.no_grad():
        model.conv0_a.weight[0, 0, 1, 1, 1] += 3.0
        model.conv0_b.weight[0, 0, 1, 1, 1] += 1.0
        model.conv_lom.weight[0, 0] += 3.0
        model.conv_lom.bias[:] = -2.0
    return model


def test_separated_objects_are_filled_together_as_sequentially():
    _, y, x = np.indices((40, 40, 40))
    centres = [(10, 10), (10, 30), (30, 10), (30, 30)]
    tubes = np.zeros((40, 40, 40), dtype=bool)
    for cy, cx in centres:
        tubes |= (y - cy) ** 2 + (x - cx) ** 2 <= 4
    image = np.where(tubes, 1.0, -1.0).astype(np.float32)
    seeds = [(20, cy, cx) for cy, cx in centres]
    expected = Canvas(image, OraclePredictor(), OPTIONS).segment_all(seeds)
    predictor = BatchOracle()
    got = BatchedCanvas(image, predictor, OPTIONS, max_objects=4).segment_all(seeds)
    assert_same_result(expected, got)
    assert got.counters["seeds_accepted"] == 4
    assert max(predictor.batches) == 4  # the four objects shared forward passes
    assert got.counters["objects_restarted"] == got.counters["objects_cancelled"] == 0
    assert got.counters["fov_evaluations_total"] == expected.counters["fov_evaluations"]
    assert got.counters["forward_batches"] == len(predictor.batches)


@pytest.mark.parametrize("decay", [0.0, 0.1, 0.3])
def test_touching_objects_give_the_sequential_result(decay):
    image, tubes = crossing_tubes()
    rng = np.random.default_rng(int(decay * 10))
    stats = {"objects_restarted": 0, "objects_cancelled": 0}
    for _ in range(4):
        inside = np.argwhere(tubes)[rng.choice(int(tubes.sum()), 25)]
        anywhere = rng.integers(0, 40, (5, 3))
        seeds = [tuple(p) for p in np.concatenate([inside, anywhere])]
        seeds += seeds[:3]  # tried twice: the second time refused
        expected = Canvas(image, DecayPredictor(decay), OPTIONS).segment_all(seeds)
        for max_objects, lookahead in ((2, None), (5, 5), (16, None), (4, 64)):
            got = BatchedCanvas(
                image, DecayPredictor(decay), OPTIONS, max_objects=max_objects, lookahead=lookahead
            ).segment_all(seeds)
            assert_same_result(expected, got)
            for key in stats:
                stats[key] += got.counters[key]
    assert stats["objects_cancelled"] > 0  # seeds covered by an earlier object
    if decay > 0:
        assert stats["objects_restarted"] > 0  # paths run into an earlier object's segment


def test_runs_are_deterministic():
    image, tubes = crossing_tubes()
    seeds = [tuple(p) for p in np.argwhere(tubes)[::97]]
    runs = [
        BatchedCanvas(image, DecayPredictor(0.1), OPTIONS, max_objects=6).segment_all(seeds)
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].labels, runs[1].labels)
    assert runs[0].origins == runs[1].origins
    counters = [{k: v for k, v in r.counters.items() if k != "wall_s"} for r in runs]
    assert counters[0] == counters[1]


def test_max_objects_one_and_many_agree_with_a_tiny_model():
    image, tubes = crossing_tubes((24, 24, 24), radius=2)
    image = image + np.random.default_rng(3).normal(0, 0.3, image.shape).astype(np.float32)
    rng = np.random.default_rng(1)
    seeds = [tuple(p) for p in np.argwhere(tubes)[rng.choice(int(tubes.sum()), 6)]]
    model = tiny_model()
    # fixed_batch=1: every FOV is computed alone, so batching cannot change a single bit.
    expected = Canvas(image, FovPredictor(model, "cpu"), OPTIONS).segment_all(seeds)
    assert expected.counters["fov_evaluations"] > 20 and expected.counters["seeds_accepted"] >= 1
    for max_objects in (1, 4):
        predictor = FovPredictor(model, "cpu", fixed_batch=1)
        got = BatchedCanvas(image, predictor, OPTIONS, max_objects=max_objects).segment_all(seeds)
        assert_same_result(expected, got)
        assert predictor.fov_evaluations == got.counters["fov_evaluations_total"]


def test_predictor_bf16_channels_last_runs_on_cpu():
    model = tiny_model()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 9, 9, 9)).astype(np.float32)
    pom = rng.normal(size=(3, 9, 9, 9)).astype(np.float32)
    reference = FovPredictor(model, "cpu", "fp32").predict(image, pom)
    fast = FovPredictor(model, "cpu", "bf16", memory_format="channels_last")
    out = fast.predict(image, pom)
    assert out.dtype == np.float32 and out.shape == (3, 9, 9, 9)
    assert fast.memory_format == "channels_last"
    assert np.abs(out - reference).max() < 0.1 * max(1.0, np.abs(reference).max())
    # fixed_batch: pads and splits, so each FOV's result is what it gets on its own
    fixed = FovPredictor(model, "cpu", "bf16", memory_format="channels_last", fixed_batch=2)
    together = fixed.predict(image, pom)
    alone = np.concatenate([fixed.predict(image[i : i + 1], pom[i : i + 1]) for i in range(3)])
    assert np.array_equal(together, alone)
    assert fixed.fov_evaluations == 6 and fixed.model_calls == 5


def test_low_precision_without_cpu_instructions_is_warned(monkeypatch, caplog):
    from ffnflow.ffn import predictor as predictor_module

    model = tiny_model()
    with caplog.at_level("WARNING", logger="ffnflow.ffn.predictor"):
        FovPredictor(model, "cpu", "bf16")
        FovPredictor(model, "cpu", "fp32")
    warned = [r for r in caplog.records if "emulates" in r.getMessage()]
    assert len(warned) == (0 if predictor_module.cpu_runs_natively("bf16") else 1)
    assert predictor_module.cpu_runs_natively("fp32") is True
    caplog.clear()
    monkeypatch.setattr(
        predictor_module, "cpu_runs_natively", lambda precision: precision == "fp32"
    )
    with caplog.at_level("WARNING", logger="ffnflow.ffn.predictor"):
        FovPredictor(model, "cpu", "fp32")
        FovPredictor(model, "cpu", "bf16")
    (record,) = caplog.records
    assert "ffn.precision bf16" in record.getMessage() and "fp32" in record.getMessage()


def test_predictor_rejects_bad_options():
    with pytest.raises(InputError, match="memory_format"):
        FovPredictor(tiny_model(), "cpu", memory_format="nhwc")
    with pytest.raises(InputError, match="fixed_batch"):
        FovPredictor(tiny_model(), "cpu", fixed_batch=0)
    with pytest.raises(InputError, match="max_objects"):
        BatchedCanvas(np.zeros((20, 20, 20), np.float32), OraclePredictor(), OPTIONS, max_objects=0)


class RecordingBatchedCanvas(BatchedCanvas):
    """Remembers every FOV centre it evaluated."""

    def _next_position(self, fill):
        pos = super()._next_position(fill)
        if pos is not None:
            self.centres.append(pos)
        return pos


def test_masks_are_honoured():
    image, tube = tube_image()
    movement_mask = np.zeros_like(tube)
    movement_mask[26:] = True
    seed_mask = np.zeros_like(tube)
    seed_mask[8:12] = True
    seeds = [(10, 20, 20), (20, 20, 20), (30, 20, 20), (6, 20, 20)]
    expected = Canvas(
        image, OraclePredictor(), OPTIONS, movement_mask=movement_mask, seed_mask=seed_mask
    ).segment_all(seeds)
    canvas = RecordingBatchedCanvas(
        image,
        OraclePredictor(),
        OPTIONS,
        movement_mask=movement_mask,
        seed_mask=seed_mask,
        max_objects=3,
    )
    canvas.centres = []
    got = canvas.segment_all(seeds)
    assert_same_result(expected, got)
    assert canvas.centres and not any(movement_mask[c] for c in canvas.centres)
    assert not got.labels[movement_mask].any()
    assert got.counters["seeds_skipped_masked"] == 2  # (10, 20, 20) and (30, 20, 20)
    assert got.counters["seeds_skipped_segmented"] == 1  # (6, 20, 20)


def test_local_pom_reads_like_a_full_volume_pom():
    shape = (30, 30, 30)
    rng = np.random.default_rng(0)
    full = np.full(shape, np.nan, dtype=np.float32)
    full[15, 15, 15] = 2.0
    local = LocalPom(shape, (15, 15, 15), 2.0, slack=np.array([3, 3, 3]))
    for _ in range(30):
        lo = rng.integers(0, 22, 3)
        sel = tuple(slice(int(a), int(a) + 9) for a in lo)
        values = rng.normal(size=(9, 9, 9)).astype(np.float32)
        full[sel] = values
        local.write(sel, values)
        probe = tuple(slice(int(a), int(a) + 12) for a in rng.integers(0, 19, 3))
        np.testing.assert_array_equal(local.read(probe), full[probe])
        pos = tuple(int(v) for v in rng.integers(0, 30, 3))
        np.testing.assert_array_equal(local.get(pos), full[pos])
    assert np.all(local.lo >= 0) and np.all(local.hi <= 30)


def test_canvases_filled_together_give_each_ones_own_result():
    """segment_canvases batches the FOVs of several canvases (blocks) into one call each
    step; every canvas ends as it would alone."""
    image, tubes = crossing_tubes()
    rng = np.random.default_rng(5)
    blocks = [
        (slice(0, 28), slice(0, 40), slice(0, 40)),
        (slice(12, 40), slice(0, 40), slice(0, 40)),
    ]
    seeds = []
    for block in blocks:
        inside = np.argwhere(tubes[block])
        seeds.append([tuple(p) for p in inside[rng.choice(len(inside), 20)]])
    alone = [
        BatchedCanvas(image[b], DecayPredictor(0.1), OPTIONS, max_objects=3).segment_all(s)
        for b, s in zip(blocks, seeds)
    ]
    predictor = CountingDecayPredictor(0.1)
    canvases = [BatchedCanvas(image[b], predictor, OPTIONS, max_objects=3) for b in blocks]
    together = segment_canvases(canvases, seeds)
    for a, t in zip(alone, together):
        assert_same_result(a, t)
    assert max(predictor.batches) > 3  # FOVs of both canvases shared calls
    assert len(predictor.batches) < sum(r.counters["forward_batches"] for r in alone)


def test_pow2_batches_pad_calls_and_keep_outputs():
    predictor = FovPredictor(tiny_model(), "cpu", "fp32", threads=1, pow2_batches=True)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 9, 9, 9)).astype(np.float32)
    pom = rng.normal(size=(5, 9, 9, 9)).astype(np.float32)
    padded = predictor.predict(image, pom)
    assert padded.shape == (5, 9, 9, 9)
    single = np.concatenate([predictor.predict(image[i : i + 1], pom[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(padded, single, atol=1e-4)


def test_default_threads_do_not_inherit_an_earlier_predictors_setting():
    from ffnflow.ffn.predictor import default_threads

    before = default_threads()
    FovPredictor(tiny_model(), "cpu", "fp32", threads=1)
    assert torch.get_num_threads() == 1
    assert default_threads() == before  # a later predictor without threads gets them all
