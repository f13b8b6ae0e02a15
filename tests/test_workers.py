"""Canvases filled in worker processes give each canvas its own segment_all result."""

import numpy as np
import pytest

from ffnflow.errors import InputError
from ffnflow.ffn.batched import BatchedCanvas
from ffnflow.ffn.predictor import FovPredictor, split_parts
from ffnflow.ffn.workers import segment_canvases_in_workers
from tests.test_batched import (
    OPTIONS,
    CountingDecayPredictor,
    DecayPredictor,
    assert_same_result,
    crossing_tubes,
    tiny_model,
)

BLOCKS = [
    (slice(0, 28), slice(0, 40), slice(0, 40)),
    (slice(12, 40), slice(0, 40), slice(0, 40)),
    (slice(0, 40), slice(0, 24), slice(0, 40)),
]


def block_seeds(tubes, n=15, seed=5):
    rng = np.random.default_rng(seed)
    out = []
    for block in BLOCKS:
        inside = np.argwhere(tubes[block])
        out.append([tuple(p) for p in inside[rng.choice(len(inside), n)]])
    return out


def each_alone(image, seeds):
    """Each block's own segment_all result (DecayPredictor(0.1), 3 objects)."""
    return [
        BatchedCanvas(image[b], DecayPredictor(0.1), OPTIONS, max_objects=3).segment_all(s)
        for b, s in zip(BLOCKS, seeds)
    ]


@pytest.mark.parametrize("workers, max_batch", [(2, None), (3, 4)])
def test_workers_give_each_canvas_its_own_result(workers, max_batch):
    image, tubes = crossing_tubes()
    seeds = block_seeds(tubes)
    alone = each_alone(image, seeds)
    predictor = CountingDecayPredictor(0.1)
    canvases = [BatchedCanvas(image[b], predictor, OPTIONS, max_objects=3) for b in BLOCKS]
    got = segment_canvases_in_workers(canvases, seeds, predictor, workers, max_batch)
    for a, g in zip(alone, got):
        assert_same_result(a, g)
    assert sum(predictor.batches) == sum(r.counters["fov_evaluations_total"] for r in got)
    if max_batch:
        assert max(predictor.batches) <= max_batch
    else:
        assert max(predictor.batches) > 3  # FOVs of several canvases shared calls


def test_workers_with_a_model_predictor_match_in_process_fills():
    """FovPredictor.predict_into (straight to the device and back) gives what each
    canvas gets alone with a one-FOV-per-call predictor."""
    image, tubes = crossing_tubes()
    seeds = block_seeds(tubes, n=6, seed=2)
    model = tiny_model()
    alone = [
        BatchedCanvas(
            image[b], FovPredictor(model, "cpu", fixed_batch=1, threads=1), OPTIONS, max_objects=2
        ).segment_all(s)
        for b, s in zip(BLOCKS, seeds)
    ]
    predictor = FovPredictor(model, "cpu", threads=1)
    canvases = [BatchedCanvas(image[b], predictor, OPTIONS, max_objects=2) for b in BLOCKS]
    got = segment_canvases_in_workers(canvases, seeds, predictor, 2)
    for a, g in zip(alone, got):
        assert np.array_equal(a.labels, g.labels)
        assert a.counters["fov_evaluations"] == g.counters["fov_evaluations"]
    assert predictor.fov_evaluations == sum(r.counters["fov_evaluations_total"] for r in got)


class FailingCanvas(BatchedCanvas):
    def _apply(self, batch, logits):
        raise ValueError("boom in a worker")


def test_a_failing_worker_raises_with_its_traceback():
    image, tubes = crossing_tubes()
    seeds = block_seeds(tubes, n=4)
    predictor = DecayPredictor(0.1)
    canvases = [BatchedCanvas(image[BLOCKS[0]], predictor, OPTIONS, max_objects=2)]
    canvases.append(FailingCanvas(image[BLOCKS[1]], predictor, OPTIONS, max_objects=2))
    with pytest.raises(RuntimeError, match="boom in a worker"):
        segment_canvases_in_workers(canvases, seeds[:2], predictor, 2)


def test_bad_worker_arguments_are_refused():
    image, tubes = crossing_tubes()
    canvases = [BatchedCanvas(image, DecayPredictor(0.1), OPTIONS)]
    with pytest.raises(InputError, match="workers"):
        segment_canvases_in_workers(canvases, [[(20, 20, 20)]], DecayPredictor(0.1), 0)
    with pytest.raises(InputError, match="seed lists"):
        segment_canvases_in_workers(canvases, [], DecayPredictor(0.1), 1)


class DyingCanvas(BatchedCanvas):
    def _apply(self, batch, logits):
        import os

        os._exit(3)


def test_a_worker_that_dies_is_reported_with_its_exit_code():
    image, tubes = crossing_tubes()
    seeds = block_seeds(tubes, n=4)
    predictor = DecayPredictor(0.1)
    canvases = [DyingCanvas(image[BLOCKS[0]], predictor, OPTIONS, max_objects=2)]
    with pytest.raises(RuntimeError, match="died .exit code 3"):
        segment_canvases_in_workers(canvases, seeds[:1], predictor, 1)


class DelayedDecayPredictor(DecayPredictor):
    """DecayPredictor behind ``submit``: a call lands only after its handle was polled a
    few times; until then its outputs hold NaN (as device memory not yet copied back)."""

    fixed_batch = 4

    def __init__(self, decay, polls=3):
        super().__init__(decay)
        self.polls = polls
        self.sizes = []
        self.in_flight = 0
        self.most_in_flight = 0

    def submit(self, parts):
        predictor = self
        self.sizes.append(sum(len(i) for i, _ in parts))
        assert self.sizes[-1] <= self.fixed_batch
        for _, out in parts:
            out[...] = np.nan
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

        class Call:
            left = self.polls

            def done(self):
                self.left -= 1
                if self.left > 0:
                    return False
                self.wait()
                return True

            def wait(self):
                if self.left is not None:
                    for inputs, out in parts:
                        out[...] = predictor.predict(inputs[:, 0], inputs[:, 1])
                    predictor.in_flight -= 1
                    self.left = None

        return Call()


def test_calls_in_flight_release_workers_only_once_their_fovs_landed():
    image, tubes = crossing_tubes()
    seeds = block_seeds(tubes)
    alone = each_alone(image, seeds)
    predictor = DelayedDecayPredictor(0.1)
    canvases = [BatchedCanvas(image[b], predictor, OPTIONS, max_objects=3) for b in BLOCKS]
    stats = {}
    got = segment_canvases_in_workers(canvases, seeds, predictor, 3, in_flight=2, stats=stats)
    for a, g in zip(alone, got):
        assert_same_result(a, g)
    assert predictor.in_flight == 0 and predictor.most_in_flight == 2
    assert stats["calls"] == len(predictor.sizes) and stats["calls_while_busy"] >= 1
    assert stats["mean_call"] == round(sum(predictor.sizes) / len(predictor.sizes), 1)
    assert 0 < stats["worker_busy_fraction"] <= 1 and stats["worker_steps"] > 0
    assert max(predictor.sizes) == 4  # the predictor's fixed_batch
    assert sum(predictor.sizes) == sum(r.counters["fov_evaluations_total"] for r in got)


def test_split_parts_and_fixed_batch_submit():
    x = np.arange(7 * 2 * 9 * 9 * 9, dtype=np.float32).reshape(7, 2, 9, 9, 9)
    outs = [np.zeros((3, 9, 9, 9), np.float32), np.zeros((4, 9, 9, 9), np.float32)]
    chunks = split_parts([(x[:3], outs[0]), (x[3:], outs[1])], 2)
    assert [[len(i) for i, _ in c] for c in chunks] == [[2], [1, 1], [2], [1]]
    assert np.array_equal(np.concatenate([i for c in chunks for i, _ in c]), x)
    model = tiny_model()
    fixed = FovPredictor(model, "cpu", fixed_batch=2, threads=1)
    with pytest.raises(InputError, match="more than fixed_batch 2"):
        fixed.submit([(x[:3], outs[0])])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 9, 9, 9)).astype(np.float32)
    out = np.full((3, 9, 9, 9), np.nan, np.float32)
    fixed.predict_into([(x, out)])  # two calls: 2 FOVs, then 1 padded to 2
    assert fixed.model_calls == 2 and fixed.fov_evaluations == 3
    np.testing.assert_array_equal(out, fixed.predict(x[:, 0], x[:, 1]))
